"""DRAEM from anomalib as method ``draem`` of usad.compare (golden training scenes stand in for DTD)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from anomalib_testkit import bare, build, check_common, fitted_run, require_anomalib

require_anomalib()

IMAGE_SIZE = 64  # tests/golden.yaml


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fitted_run("draem", tmp_path_factory.mktemp("draem"), n_train=5)  # one batch of 4


def test_draem_fit_predict_save_load_and_metrics(run, tmp_path):
    check_common(run, IMAGE_SIZE, tmp_path)


def test_draem_image_score_is_the_authors_pooled_max(run):
    # test_DRAEM.py: max of avg_pool2d(map, 21, stride 1, padding 10): a zero-padded 21 x 21 mean filter
    k = run["method"].section.score_pool
    expected = [ndimage.uniform_filter(m.astype(np.float64), k, mode="constant", cval=0.0).max() for m in run["maps"]]
    np.testing.assert_allclose(run["scores"], expected, rtol=1e-5, atol=1e-7)


def test_draem_score_pool_1_is_anomalibs_max(run):
    method = run["method"]
    method.section["score_pool"] = 1
    try:
        scores, maps = method.predict(run["files"])
    finally:
        method.section["score_pool"] = 21
    np.testing.assert_array_equal(scores, maps.max(axis=(1, 2)))


def test_draem_uses_the_authors_schedule_and_init():
    from lightning.pytorch import Trainer

    module = build("draem", "draem.max_epochs=10").build()
    module.trainer = Trainer(max_epochs=10, logger=False, enable_progress_bar=False)
    (optimizer,), (scheduler,) = module.configure_optimizers()
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # train_DRAEM.py: MultiStepLR(optimizer, [epochs * 0.8, epochs * 0.9], gamma=0.2) on lr 1e-4
    np.testing.assert_allclose(lrs, [1e-4] * 8 + [2e-5] + [4e-6])
    convs = [m.weight for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m.weight for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights, gains = torch.cat([w.flatten() for w in convs]), torch.cat([w.flatten() for w in norms])
    assert abs(weights.mean()) < 1e-3 and abs(weights.std() - 0.02) < 1e-3      # N(0, 0.02)
    assert abs(gains.mean() - 1) < 5e-3 and abs(gains.std() - 0.02) < 5e-3      # N(1, 0.02)


def test_draem_missing_or_empty_texture_folder_is_one_error_naming_the_key(tmp_path):
    from usad.models.anomalib.weights import AnomalibWeightsError

    with pytest.raises(AnomalibWeightsError, match=r"draem\.dtd_dir is not set"):
        bare("draem").check()
    with pytest.raises(AnomalibWeightsError, match=r"draem\.dtd_dir = .* is not a folder"):
        build("draem", f"draem.dtd_dir={tmp_path / 'dtd'}").check()
    (tmp_path / "dtd" / "images").mkdir(parents=True)  # anomalib would silently use plain Perlin noise here
    with pytest.raises(AnomalibWeightsError, match=r"draem\.dtd_dir = .* holds no images"):
        build("draem", f"draem.dtd_dir={tmp_path / 'dtd'}").check()
