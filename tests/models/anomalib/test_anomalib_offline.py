"""What the four anomalib adapters share: the registry, the data they may see, and no network during a run."""

import socket
from pathlib import Path

import pytest

from anomalib_testkit import REPO, bare, build, files_of_test_set, make_scenes, require_anomalib, split_of

require_anomalib()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails (and is recorded)."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"network blocked by the test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_registry_names_the_four_adapters_and_their_pinned_requirement():
    import anomalib

    from usad.models import method_class
    from usad.models.anomalib import methods

    expected = {"patchcore": methods.PatchCore, "efficientad": methods.EfficientAD, "draem": methods.DRAEM,
                "rd4ad": methods.RD4AD}
    for name, cls in expected.items():
        assert method_class(name) is cls and cls.name == name and cls.requires == ("anomalib",)
        pins = (REPO / cls.requirements_file).read_text().splitlines()
        assert f"anomalib=={anomalib.__version__}" in pins


def test_datamodule_holds_exactly_the_split_and_no_test_set(tmp_path):
    from usad.models.anomalib.data import SplitDataModule

    category_dir = make_scenes(tmp_path)
    split = split_of(category_dir, n_validation=2)
    dm = SplitDataModule(split.train, split.validation, train_batch_size=2, eval_batch_size=2)
    dm.setup("fit")
    assert dm.train_data.files == split.train and dm.val_data.files == split.validation and len(dm.test_data) == 0
    seen = [Path(p) for loader in (dm.train_dataloader(), dm.val_dataloader()) for b in loader for p in b.image_path]
    assert sorted(seen) == sorted(split.train + split.validation)
    assert not set(seen) & set(files_of_test_set(category_dir))
    assert sorted(dm.opened()) == sorted(seen)


def test_fit_and_predict_open_no_connection(tmp_path, no_network):
    category_dir = make_scenes(tmp_path, n_train=3, n_good=1, n_bad=1)
    method = build("patchcore")
    method.fit(split_of(category_dir))
    scores, maps = method.predict(files_of_test_set(category_dir))
    assert len(scores) == 2 and not no_network


@pytest.mark.parametrize("name, overrides, key", [
    ("patchcore", ["anomalib_patchcore.download=true"], "anomalib_patchcore.weights"),
    ("draem", ["draem.download=true"], "draem.dtd_dir"),
])
def test_download_without_network_is_one_error_naming_the_key(tmp_path, no_network, name, overrides, key):
    from usad.models.anomalib.weights import AnomalibWeightsError

    target = tmp_path / "fetched" / "file"
    method = bare(name, *overrides, f"{key}={target}")
    with pytest.raises(AnomalibWeightsError, match=rf"{key}: could not download"):
        method.check()
    assert not target.exists()


def test_a_method_section_is_changed_with_set():
    method = bare("efficientad", "efficientad.max_steps=10", "efficientad.model_size=medium")
    assert method.limits() == {"max_epochs": -1, "max_steps": 10} and method.settings()["model_size"] == "medium"
    assert bare("patchcore").settings()["section"] == "anomalib_patchcore"
