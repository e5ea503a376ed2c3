"""EfficientAD from anomalib as method ``efficientad`` of usad.compare (random teacher, golden scenes as penalty set)."""

import numpy as np
import pytest
import torch

from anomalib_testkit import bare, build, check_common, fitted_run, require_anomalib, split_of

require_anomalib()

IMAGE_SIZE = 256  # tests/golden.yaml (the smallest its autoencoder takes)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # 2 training images, 1 validation image, 2 steps; 1 normal and 1 anomalous test image
    return fitted_run("efficientad", tmp_path_factory.mktemp("efficientad"), n_train=3, n_good=1, n_bad=1)


def test_efficientad_fit_predict_save_load_and_metrics(run, tmp_path):
    check_common(run, IMAGE_SIZE, tmp_path)


def test_efficientad_quantiles_come_from_the_validation_images_with_the_final_weights(run):
    from usad.models.anomalib.data import loader, model_resize

    module = run["method"].module
    assert set(run["split"].validation) <= set(run["method"].opened["fit"])
    maps_st, maps_ae = [], []
    with torch.no_grad():
        for batch in loader(run["split"].validation, model_resize(module), 1):
            st, ae = module.model.get_maps(batch.image, normalize=False)
            maps_st.append(st)
            maps_ae.append(ae)
    st, ae = torch.cat(maps_st).flatten(), torch.cat(maps_ae).flatten()
    q = module.model.quantiles
    expected = {"qa_st": st.quantile(0.9), "qb_st": st.quantile(0.995), "qa_ae": ae.quantile(0.9), "qb_ae": ae.quantile(0.995)}
    for name, value in expected.items():
        torch.testing.assert_close(q[name].detach(), value)


def test_efficientad_learning_rate_drops_after_95_percent_of_the_steps(run):
    # paper: lr 1e-4, x 0.1 after 95 % of the steps; StepLR(step_size = int(0.95 * 2) = 1) stepped every step
    assert run["method"].final_lr == pytest.approx([1e-6])


def test_efficientad_teacher_comes_from_the_file_or_is_random_only_when_asked(tmp_path, caplog):
    module = build("efficientad").build()
    teacher = {k: torch.randn_like(v) for k, v in module.model.teacher.state_dict().items()}
    torch.save(teacher, tmp_path / "teacher.pth")
    local = build("efficientad", "efficientad.pretrained=true", f"efficientad.teacher_weights={tmp_path / 'teacher.pth'}")
    local.check()
    loaded = local.build()
    loaded.prepare_pretrained_model()
    for name, value in loaded.model.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher[name], rtol=0, atol=0)
    module.prepare_pretrained_model()  # golden: pretrained false
    assert "RANDOM weights (efficientad.pretrained = false)" in caplog.text


def test_efficientad_missing_files_are_one_error_naming_the_key(tmp_path):
    from usad.models.anomalib.weights import AnomalibWeightsError

    with pytest.raises(AnomalibWeightsError, match=r"efficientad\.teacher_weights is not set"):
        bare("efficientad").check()
    with pytest.raises(AnomalibWeightsError, match=r"efficientad\.teacher_weights = '/nope/t.pth' does not exist"):
        build("efficientad", "efficientad.pretrained=true", "efficientad.teacher_weights=/nope/t.pth").check()
    with pytest.raises(AnomalibWeightsError, match=r"efficientad\.imagenet_dir = .* is not a folder"):
        build("efficientad", f"efficientad.imagenet_dir={tmp_path / 'imagenette2'}").check()
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(b"")
    with pytest.raises(AnomalibWeightsError, match=r"efficientad\.imagenet_dir = .* one subfolder per class"):
        build("efficientad", f"efficientad.imagenet_dir={flat}").check()


def test_efficientad_needs_validation_images(tmp_path):
    from anomalib_testkit import make_scenes
    from usad.core.errors import UsadError

    split = split_of(make_scenes(tmp_path, n_train=3, n_good=1, n_bad=1))
    split.train, split.validation = split.train + split.validation, []
    with pytest.raises(UsadError, match="split.validation"):
        build("efficientad").fit(split)
