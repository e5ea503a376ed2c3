"""Bad input to CSAD / AeCSAD: one UsadError naming the config key, raised before any training."""

import pytest
import torch

from usad.core.config import load_config
from usad.core.errors import UsadError
from usad.models.base import Split
from usad.models.csad.lgst_train import PenaltyImagesError
from usad.models.csad.method import AeCSAD, CSAD, CSADError

GOLDEN_YAML = "tests/golden.yaml"


def method(cls, *overrides):
    return cls(load_config(GOLDEN_YAML, ["device=cpu", *overrides]), torch.device("cpu"))


@pytest.mark.parametrize("cls", [CSAD, AeCSAD])
def test_missing_backbone_weights(cls, tmp_path):
    m = method(cls, f"{cls.name}.backbone_weights={tmp_path / 'nope.pth'}")
    with pytest.raises(UsadError, match=f"{cls.name}.backbone_weights"):
        m.check()


def test_penalty_folder_missing_unset_or_empty(tmp_path):
    with pytest.raises(PenaltyImagesError, match=r"csad.lgst.penalty_dir is not set.*csad.lgst.penalty=false"):
        method(CSAD, "csad.lgst.penalty=true").check()
    with pytest.raises(PenaltyImagesError, match="is not a folder"):
        method(CSAD, "csad.lgst.penalty=true", f"csad.lgst.penalty_dir={tmp_path / 'none'}").check()
    (tmp_path / "empty").mkdir()
    with pytest.raises(PenaltyImagesError, match="holds no image files"):
        method(CSAD, "csad.lgst.penalty=true", f"csad.lgst.penalty_dir={tmp_path / 'empty'}").check()


def test_bad_branch_and_fit_on():
    with pytest.raises(CSADError, match="csad.fusion.branches"):
        method(CSAD, "csad.fusion.branches=[lgst, other]").check()
    with pytest.raises(CSADError, match="aecsad.histogram.fit_on"):
        method(AeCSAD, "aecsad.histogram.fit_on=all").check()


def test_no_validation_images(tmp_path):
    split = Split(root=tmp_path, category="pushpins", layout="loco", train=[tmp_path / "a.png"], validation=[])
    with pytest.raises(CSADError, match="needs validation images"):
        method(CSAD).fit(split)


def test_pseudo_label_folder_not_matching_the_images(tmp_path):
    """The adapter passes csad.pseudo_labels to the pseudo-label loader, which names the mismatch."""
    from PIL import Image

    files = []
    for i in range(20):
        f = tmp_path / "train" / f"{i:03d}.png"
        f.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(f)
        files.append(f)
    (tmp_path / "masks" / "000").mkdir(parents=True)
    split = Split(root=tmp_path, category="pushpins", layout="loco", train=files, validation=files[:2])
    with pytest.raises(UsadError, match="does not match the training images"):
        method(CSAD, f"csad.pseudo_labels={tmp_path / 'masks'}").fit(split)
