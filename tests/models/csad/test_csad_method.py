"""CSAD / AeCSAD end to end on generated LOCO scenes (tiny stand-ins from tests/golden.yaml, precomputed masks):
fit, predict, save, load (same outputs), and the fit config checked on load."""

import numpy as np
import pytest
import torch
from PIL import Image

from golden_csad_seg import scene_masks
from usad.core.config import load_config
from usad.core.data.loco_synthetic import make_synthetic_loco
from usad.models.base import Split
from usad.models.csad.method import AeCSAD, CSAD

GOLDEN_YAML = "tests/golden.yaml"


def mask_folder(files, out):
    """The precomputed-masks layout (<stem>/refined_masks.png) from the scenes' parts."""
    for f in files:
        (out / f.stem).mkdir(parents=True)
        Image.fromarray(scene_masks(np.asarray(Image.open(f).convert("RGB")))).save(out / f.stem / "refined_masks.png")
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csad_method")
    root = make_synthetic_loco(tmp / "data", n_train=20, n_validation=3, n_test_good=1, n_logical=1,
                               n_structural=1, size=256, seed=3)
    train = sorted((root / "train" / "good").glob("*.png"))
    return {"root": root, "tmp": tmp, "train": train, "masks": mask_folder(train, tmp / "masks"),
            "val": sorted((root / "validation" / "good").glob("*.png")),
            "test": sorted((root / "test").glob("*/*.png"))}


@pytest.mark.parametrize("cls", [CSAD, AeCSAD])
def test_fit_predict_save_load(cls, scenes, tmp_path):
    torch.set_num_threads(2)
    cfg = load_config(GOLDEN_YAML, ["device=cpu", f"{cls.name}.pseudo_labels={scenes['masks']}",
                                    "data.batch_size=4"])
    split = Split(root=scenes["root"], category="pushpins", layout="loco", train=scenes["train"],
                  validation=scenes["val"])
    m = cls(cfg, torch.device("cpu"))
    m.check()
    m.fit(split)
    scores, maps = m.predict(scenes["test"])
    assert scores.shape == (len(scenes["test"]),) and np.isfinite(scores).all()
    assert maps.shape == (len(scenes["test"]), 256, 256) and np.isfinite(maps).all()
    m.save(tmp_path)
    again = cls(cfg, torch.device("cpu"))
    assert again.load(tmp_path)
    s2, m2 = again.predict(scenes["test"])
    np.testing.assert_allclose(s2, scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m2, maps, rtol=1e-5, atol=1e-6)
    other = load_config(GOLDEN_YAML, ["device=cpu", f"{cls.name}.lgst.iterations=4"])
    assert not cls(other, torch.device("cpu")).load(tmp_path)   # another fit config: not reused
