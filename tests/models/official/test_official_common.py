"""The adapters' checks and fitted-state pointers, for all four official-code baselines (no training here)."""

import json

import pytest
import torch

from usad.core.config import ConfigError, load_config
from usad.models import method_class
from usad.models.official.methods import NotFittedError, OfficialRunError
from official_fixtures import coal_data, official  # noqa: F401 (pytest fixtures)

CPU = torch.device("cpu")
NAMES = ("simplenet", "rdpp", "ckaad", "isstad")
WEIGHTS_KEY = {"simplenet": "backbone_weights", "rdpp": "backbone_weights", "ckaad": "backbone_weights",
               "isstad": "mae_weights"}


@pytest.mark.parametrize("name", NAMES)
def test_official_missing_clone_is_one_clear_error(name, official, tmp_path):
    cls = method_class(name)
    method = cls(official.config(tmp_path, f"{name}.authors={tmp_path / 'no_clone'}"), CPU)
    with pytest.raises(OfficialRunError, match=rf"config key '{name}\.authors'.*does not exist.*git clone"):
        method.check()
    with pytest.raises(NotFittedError):
        method.predict([])


@pytest.mark.parametrize("name", NAMES)
def test_official_missing_weights_name_the_key(name, official, tmp_path):
    official.require(name)
    key = WEIGHTS_KEY[name]
    cfg = official.config(tmp_path, f"{name}.{key}={tmp_path / 'absent.pth'}")
    with pytest.raises(OfficialRunError, match=rf"config key '{name}\.{key}': .*absent\.pth does not exist"):
        method_class(name)(cfg, CPU).check()
    cfg = load_config(None, [f"paths.models={tmp_path}"])  # the defaults: no weights file, nothing random
    with pytest.raises(OfficialRunError, match=rf"config key '{name}\.{key}' is not set"):
        method_class(name)(cfg, CPU).check()


def test_official_rdpp_tiny_networks_need_random_weights(official, tmp_path):
    cfg = official.config(tmp_path, "rdpp.random_backbone=false")
    with pytest.raises(ConfigError, match="rdpp.tiny_networks"):
        method_class("rdpp")(cfg, CPU).check()


def test_official_pointer_reloads_only_the_same_fit(official, tmp_path):
    """save() points at the work folder; load() accepts it only with the same fit config and checkpoint."""
    official.require("simplenet")
    cls = method_class("simplenet")
    work = tmp_path / "work"
    (work / "ckpt").mkdir(parents=True)
    (work / "ckpt" / "c.pth").write_bytes(b"their checkpoint")
    from usad.core.artifacts import file_sha256

    record = {"checkpoint": "ckpt/c.pth", "checkpoint_sha256": file_sha256(work / "ckpt" / "c.pth")}
    (work / "fit.json").write_text(json.dumps(record))
    method = cls(official.config(tmp_path), CPU)
    method.work, method.fit_record = work, record
    method.save(tmp_path / "models")
    assert cls(official.config(tmp_path), CPU).load(tmp_path / "models")
    assert not cls(official.config(tmp_path, "simplenet.meta_epochs=2"), CPU).load(tmp_path / "models")
    assert not cls(official.config(tmp_path, "seed=1"), CPU).load(tmp_path / "models")
    (work / "ckpt" / "c.pth").write_bytes(b"changed")
    assert not cls(official.config(tmp_path), CPU).load(tmp_path / "models")
