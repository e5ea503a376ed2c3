"""PatchCore from anomalib as method ``patchcore`` of usad.compare (tiny seeded ResNet-18 from a local file)."""

import pytest
import torch

from anomalib_testkit import TINY_WEIGHTS, bare, build, check_common, fitted_run, require_anomalib

require_anomalib()

IMAGE_SIZE = 64  # tests/golden.yaml


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fitted_run("patchcore", tmp_path_factory.mktemp("patchcore"))


def test_patchcore_fit_predict_save_load_and_metrics(run, tmp_path):
    check_common(run, IMAGE_SIZE, tmp_path)


def test_patchcore_backbone_comes_from_the_weights_file(run):
    state = torch.load(TINY_WEIGHTS, weights_only=True)
    extractor = run["method"].module.model.feature_extractor.feature_extractor
    for name in ("conv1.weight", "layer2.0.conv1.weight", "layer3.1.bn2.running_var"):
        torch.testing.assert_close(extractor.state_dict()[name], state[name].float(), rtol=0, atol=0)


def test_patchcore_memory_bank_is_the_coreset_of_the_training_patches(run):
    # resnet18 layer2 stride 8: (64 / 8)^2 patches per training image; 128 + 256 channels; 10 % kept
    cfg = run["method"].section
    n_patches = len(run["split"].train) * (IMAGE_SIZE // 8) ** 2
    bank = run["method"].module.model.memory_bank
    assert bank.shape == (int(n_patches * cfg.coreset_ratio), 128 + 256)


def test_patchcore_saved_state_leaves_out_the_backbone(run, tmp_path):
    run["method"].save(tmp_path)
    payload = torch.load(tmp_path / "patchcore.pt", weights_only=True)
    assert "memory_bank" in payload["tensors"]
    assert not [k for k in payload["tensors"] if k.startswith("feature_extractor.")]  # from the weights file
    assert payload["fit_config"]["weights_sha256"]["anomalib_patchcore.weights"]


def test_patchcore_missing_weights_is_one_error_naming_the_key():
    from usad.models.anomalib.weights import AnomalibWeightsError

    with pytest.raises(AnomalibWeightsError, match=r"anomalib_patchcore\.weights = '/nonexistent/wrn50.pth' does not"):
        build("patchcore", "anomalib_patchcore.weights=/nonexistent/wrn50.pth").check()
    with pytest.raises(AnomalibWeightsError, match=r"anomalib_patchcore\.weights is not set"):
        bare("patchcore").check()  # the defaults: pretrained, no file


def test_patchcore_random_backbone_only_when_asked(caplog):
    method = bare("patchcore", "anomalib_patchcore.pretrained=false", "anomalib_patchcore.backbone=resnet18")
    method.check()  # no weights needed
    method.build()
    assert "RANDOM weights (anomalib_patchcore.pretrained = false)" in caplog.text
