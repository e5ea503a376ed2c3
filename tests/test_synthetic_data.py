"""The synthetic conveyor-scene generator: layout, masks, determinism, non-square scenes."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from usad.data.coalad import count_images
from usad.data.dataset import DatasetError
from usad.data.synthetic import make_synthetic_coalad


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def test_layout_counts_and_masks(tmp_path):
    root = make_synthetic_coalad(tmp_path, n_train=5, n_test_good=3, n_test_anomalous=6, size=96, seed=1)
    assert count_images(root) == {"train/good": 5, "test/good": 3, "test_anomalous": 6, "masks": 6}
    kinds = sorted(d.name for d in (root / "test").iterdir())
    assert kinds == ["bag", "good", "metal", "rope", "wood"]
    for img in (root / "test").glob("[!g]*/*.png"):
        mask = np.asarray(Image.open(root / "ground_truth" / img.parent.name / f"{img.stem}_mask.png"))
        assert mask.shape == (96, 96) and set(np.unique(mask)) == {0, 255}
        assert Image.open(img).size == (96, 96) and Image.open(img).mode == "RGB"


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_synthetic_coalad(tmp_path / "a", n_train=2, n_test_good=1, n_test_anomalous=2, size=64, seed=7)
    b = make_synthetic_coalad(tmp_path / "b", n_train=2, n_test_good=1, n_test_anomalous=2, size=64, seed=7)
    c = make_synthetic_coalad(tmp_path / "c", n_train=2, n_test_good=1, n_test_anomalous=2, size=64, seed=8)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_non_square_scenes(tmp_path):
    root = make_synthetic_coalad(tmp_path, n_train=1, n_test_good=1, n_test_anomalous=1, size=(120, 80))
    img = next((root / "test").glob("[!g]*/*.png"))
    assert Image.open(img).size == (120, 80)
    assert Image.open(next((root / "ground_truth").rglob("*.png"))).size == (120, 80)


def test_refuses_to_overwrite(tmp_path):
    root = make_synthetic_coalad(tmp_path, n_train=1, n_test_good=1, n_test_anomalous=1, size=32)
    before = digest(root)
    with pytest.raises(DatasetError, match="already exists"):
        make_synthetic_coalad(tmp_path, n_train=2, n_test_good=1, n_test_anomalous=1, size=32)
    assert digest(root) == before
    make_synthetic_coalad(tmp_path, n_train=2, n_test_good=1, n_test_anomalous=1, size=32, overwrite=True)
    assert len(list((root / "train" / "good").glob("*.png"))) == 2
