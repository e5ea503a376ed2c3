"""RD4AD from anomalib as method ``rd4ad`` of usad.compare (tiny seeded ResNet-18 encoder from a local file)."""

import pytest
import torch

from anomalib_testkit import TINY_WEIGHTS, bare, build, check_common, fitted_run, require_anomalib

require_anomalib()

IMAGE_SIZE = 64  # tests/golden.yaml


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fitted_run("rd4ad", tmp_path_factory.mktemp("rd4ad"))


def test_rd4ad_fit_predict_save_load_and_metrics(run, tmp_path):
    check_common(run, IMAGE_SIZE, tmp_path)


def test_rd4ad_encoder_is_the_weights_file_and_stays_frozen(run):
    state = torch.load(TINY_WEIGHTS, weights_only=True)
    encoder = run["method"].module.model.encoder.feature_extractor.state_dict()
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer3.1.bn2.running_mean"):
        torch.testing.assert_close(encoder[name], state[name].float(), rtol=0, atol=0)


def test_rd4ad_uses_the_authors_adam():
    module = build("rd4ad").build()
    optimizer = module.configure_optimizers()
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.005 and group["betas"] == (0.5, 0.999)  # hq-deng/RD4AD main.py
    trained = {id(p) for p in group["params"]}
    assert trained == {id(p) for p in [*module.model.decoder.parameters(), *module.model.bottleneck.parameters()]}


def test_rd4ad_score_is_the_max_of_its_map(run):
    torch.testing.assert_close(torch.from_numpy(run["scores"]), torch.from_numpy(run["maps"]).amax(dim=(1, 2)))


def test_rd4ad_missing_weights_is_one_error_naming_the_key():
    from usad.models.anomalib.weights import AnomalibWeightsError

    with pytest.raises(AnomalibWeightsError, match=r"rd4ad\.weights = '/nonexistent/wrn50.pth' does not exist"):
        build("rd4ad", "rd4ad.weights=/nonexistent/wrn50.pth").check()
    with pytest.raises(AnomalibWeightsError, match=r"rd4ad\.weights is not set"):
        bare("rd4ad").check()


def test_rd4ad_weights_of_another_network_are_refused(tmp_path):
    from usad.models.anomalib.weights import AnomalibWeightsError

    wrong = tmp_path / "resnet34.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(AnomalibWeightsError, match=r"rd4ad\.weights = .* does not fit the backbone"):
        build("rd4ad", f"rd4ad.weights={wrong}").build()
