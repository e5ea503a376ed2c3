"""Synthetic CoalAD generator: layout, sizes, masks, determinism, atomic writes."""

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from usad.core.data import dataset as ds_mod
from usad.core.data.dataset import DatasetError
from usad.core.data.synthetic import main, make_synthetic_coalad



def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_synthetic_coalad(tmp_path_factory.mktemp("syn"), n_train=3, n_test_good=2, n_test_anomalous=9,
                                 size=64, seed=1)


def test_layout_and_counts(small):
    assert small.name == "coal_ad"
    names = set(files(small))
    # 9 anomalous images round-robin over 4 kinds: wood gets 0, 4, 8 -> 000..002, the others 000..001
    per_kind = {"wood": 3, "metal": 2, "rope": 2, "bag": 2}
    expected = {f"train/good/{i:03d}.png" for i in range(3)} | {f"test/good/{i:03d}.png" for i in range(2)}
    for kind, n in per_kind.items():
        expected |= {f"test/{kind}/{i:03d}.png" for i in range(n)}
        expected |= {f"ground_truth/{kind}/{i:03d}_mask.png" for i in range(n)}
    assert names == expected
    assert [p.name for p in small.parent.iterdir()] == ["coal_ad"]  # no temporary folder left


def test_images_and_masks(small):
    for name in files(small):
        with Image.open(small / name) as im:
            assert im.size == (64, 64), name
            if name.startswith("ground_truth/"):
                assert im.mode == "L", name
                m = np.asarray(im)
                assert set(np.unique(m)) == {0, 255}, name        # binary and non-empty
                assert np.count_nonzero(m) >= 4, name
            else:
                assert im.mode == "RGB", name


def test_loads_with_the_dataset_module(small):
    assert len(ds_mod.train_samples(small)) == 3
    samples = ds_mod.test_samples(small)
    assert sorted(s.label for s in samples) == [0] * 2 + [1] * 9
    ds = ds_mod.TestDataset(small, 32, samples)
    for i, s in enumerate(samples):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32)
        assert (item["mask"].sum() > 0) == bool(s.label)


def _scene(tmp_path, kind, seed, size=128, n=6):
    out = make_synthetic_coalad(tmp_path / kind, n_train=0, n_test_good=0, n_test_anomalous=n,
                                size=size, kinds=(kind,), seed=seed)
    for i in range(n):
        img = cv2.imread(str(out / "test" / kind / f"{i:03d}.png")).astype(float)
        mask = cv2.imread(str(out / "ground_truth" / kind / f"{i:03d}_mask.png"), cv2.IMREAD_UNCHANGED) > 0
        yield img, mask


def test_mask_covers_the_visible_object(tmp_path):
    """Independent check on pixel statistics: masked pixels look like the object, the rest like coal/belt."""
    for img, mask in _scene(tmp_path, "metal", seed=3):      # bright metal on a dark scene
        assert img[mask].mean() > img[~mask].mean() + 60
    for img, mask in _scene(tmp_path, "wood", seed=4):       # brown: red far above blue, unlike coal/belt
        red_minus_blue = img[..., 2] - img[..., 0]
        assert red_minus_blue[mask].mean() > red_minus_blue[~mask].mean() + 30


def test_objects_are_partly_buried(tmp_path):
    """Planks and bars are rectangles: coal drawn over them leaves the mask clearly smaller than its convex hull."""
    buried = []
    for kind in ("wood", "metal"):
        for img, mask in _scene(tmp_path, kind, seed=5):
            pts = cv2.findNonZero(mask.astype(np.uint8))
            hull = cv2.fillConvexPoly(np.zeros(mask.shape, np.uint8), cv2.convexHull(pts), 1) > 0
            assert np.count_nonzero(mask & ~hull) == 0
            buried.append(np.count_nonzero(hull) > 1.25 * np.count_nonzero(mask))  # unburied: <= 1.11
    assert np.mean(buried) >= 0.5


def test_same_seed_identical_bytes_other_seed_differs(tmp_path):
    kw = dict(n_train=2, n_test_good=1, n_test_anomalous=4, size=64)
    a = files(make_synthetic_coalad(tmp_path / "a", seed=7, **kw))
    b = files(make_synthetic_coalad(tmp_path / "b", seed=7, **kw))
    c = files(make_synthetic_coalad(tmp_path / "c", seed=8, **kw))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".png") and "mask" not in k)


def test_non_square(tmp_path):
    out = make_synthetic_coalad(tmp_path, n_train=1, n_test_good=1, n_test_anomalous=4, size=(96, 48))
    for name in files(out):
        with Image.open(out / name) as im:
            assert im.size == (96, 48), name


def test_refuses_to_overwrite(tmp_path):
    out = make_synthetic_coalad(tmp_path, n_train=1, n_test_good=1, n_test_anomalous=1, size=48, seed=0)
    before = files(out)
    with pytest.raises(DatasetError, match="overwrite"):
        make_synthetic_coalad(tmp_path, n_train=1, n_test_good=1, n_test_anomalous=1, size=48, seed=1)
    assert files(out) == before
    make_synthetic_coalad(tmp_path, n_train=2, n_test_good=1, n_test_anomalous=1, size=48, seed=1, overwrite=True)
    after = files(out)
    assert "train/good/001.png" in after and after["train/good/000.png"] != before["train/good/000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coal_ad"]


def test_empty_existing_folder_is_filled(tmp_path):
    (tmp_path / "coal_ad").mkdir()
    out = make_synthetic_coalad(tmp_path, n_train=1, n_test_good=1, n_test_anomalous=1, size=48)
    assert (out / "train" / "good" / "000.png").is_file()


@pytest.mark.parametrize("kwargs, message", [
    (dict(kinds=("wood", "plastic")), "plastic"),
    (dict(size=16), "too small"),
    (dict(size=(64,)), "width, height"),
    (dict(n_train=-1), "n_train"),
    (dict(category="../x"), "plain folder name"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(DatasetError, match=message):
        make_synthetic_coalad(tmp_path, **kwargs)
    assert not (tmp_path / "coal_ad").exists()


def test_cli(tmp_path, capsys):
    args = ["--root", str(tmp_path), "--n-train", "2", "--n-test-good", "1", "--n-test-anomalous", "2",
            "--size", "80x48", "--kinds", "rope,bag", "--seed", "3"]
    assert main(args) == 0
    out = tmp_path / "coal_ad"
    assert set(files(out)) == {"train/good/000.png", "train/good/001.png", "test/good/000.png",
                               "test/rope/000.png", "test/bag/000.png",
                               "ground_truth/rope/000_mask.png", "ground_truth/bag/000_mask.png"}
    with Image.open(out / "test" / "rope" / "000.png") as im:
        assert im.size == (80, 48)
    assert main(args) == 2 and "overwrite" in capsys.readouterr().err


def test_fast_enough(tmp_path):
    start = time.perf_counter()
    make_synthetic_coalad(tmp_path, n_train=4, n_test_good=0, n_test_anomalous=8, size=256)
    per_image = (time.perf_counter() - start) / 12
    assert per_image < 0.2  # ~0.03 s on one core; generous for loaded CI machines
