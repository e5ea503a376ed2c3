"""read_layout / load_gt on the three layouts (generated CoalAD, the golden CoalAD fixture, generated LOCO),
and one clear LayoutError naming the path for each kind of bad layout."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import GOLDEN_FIXTURES
from usad.core.data import dataset as ds_mod
from usad.core.data.layouts import LayoutError, load_gt, read_layout, read_region
from usad.core.data.loco_synthetic import make_synthetic_loco
from usad.core.data.synthetic import make_synthetic_coalad
from usad.core.errors import UsadError

SIZE = 64


@pytest.fixture(scope="module")
def loco(tmp_path_factory) -> Path:
    return make_synthetic_loco(tmp_path_factory.mktemp("loco"), size=SIZE, seed=1, n_train=2, n_validation=2,
                               n_test_good=2, n_logical=3, n_structural=2)


@pytest.fixture(scope="module")
def coalad(tmp_path_factory) -> Path:
    return make_synthetic_coalad(tmp_path_factory.mktemp("coal"), n_train=2, n_test_good=2, n_test_anomalous=3,
                                 size=48, seed=1)


def copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def test_loco_layout(loco):
    layout = read_layout(loco)
    assert (layout.kind, layout.category, layout.root) == ("loco", "pushpins", loco)
    assert [p.name for p in layout.train] == ["000.png", "001.png"]
    assert [p.relative_to(loco).as_posix() for p in layout.validation] == ["validation/good/000.png",
                                                                            "validation/good/001.png"]
    assert [(t.path.relative_to(loco).as_posix(), t.label, t.defect) for t in layout.test] == [
        ("test/good/000.png", 0, "good"), ("test/good/001.png", 0, "good"),
        ("test/logical_anomalies/000.png", 1, "logical_anomalies"),
        ("test/logical_anomalies/001.png", 1, "logical_anomalies"),
        ("test/logical_anomalies/002.png", 1, "logical_anomalies"),
        ("test/structural_anomalies/000.png", 1, "structural_anomalies"),
        ("test/structural_anomalies/001.png", 1, "structural_anomalies")]
    for t in layout.test:
        expected = sorted((loco / "ground_truth" / t.defect / t.path.stem).glob("*.png")) if t.label else []
        assert t.masks == expected and (expected or not t.label)
    assert len(layout.test[4].masks) == 2           # logical 002, misplaced block: two regions
    config = json.loads((loco / "defects_config.json").read_text())
    assert {v: (d.name, d.saturation_threshold, d.relative_saturation) for v, d in layout.defects.items()} == {
        c["pixel_value"]: (c["defect_name"], c["saturation_threshold"], c["relative_saturation"]) for c in config}
    assert layout.labels.tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert layout.defect_types == ["logical_anomalies", "structural_anomalies"]


def test_loco_gt_is_the_union_of_the_regions(loco, tmp_path):
    layout = read_layout(loco)
    for t in layout.test:
        union = np.zeros((SIZE, SIZE), bool)
        for png in t.masks:
            union |= np.asarray(Image.open(png)) > 0
        assert np.array_equal(load_gt(t, SIZE, layout.defects), union.astype(np.uint8))   # same size: exact
        assert load_gt(t, SIZE).dtype == np.uint8
        # resized: the convention of dataset.TestDataset on the union written as an MVTec mask
        mask = tmp_path / f"{t.defect}_{t.path.stem}_mask.png"
        Image.fromarray(union.astype(np.uint8) * 255).save(mask)
        ref = ds_mod.TestDataset(loco, 40, []).load_mask(ds_mod.Sample(t.path, 1, t.defect, mask)).numpy()
        assert np.array_equal(load_gt(t, 40), ref.astype(np.uint8)), t.path


@pytest.mark.parametrize("which", ["generated", "golden"])
def test_mvtec_layout_matches_the_dataset_module(which, coalad):
    root = coalad if which == "generated" else GOLDEN_FIXTURES["repo"] / "data"
    layout = read_layout(root)
    assert layout.kind == "mvtec" and layout.validation == [] and layout.defects == {}
    assert layout.train == [s.path for s in ds_mod.train_samples(root)]
    samples = ds_mod.test_samples(root)
    assert [(t.path, t.label, t.defect, t.masks) for t in layout.test] == [
        (s.path, s.label, s.kind, [s.mask_path] if s.label else []) for s in samples]
    ds = ds_mod.TestDataset(root, 32, samples)
    for t, s in zip(layout.test, samples):
        assert np.array_equal(load_gt(t, 32), ds.load_mask(s).numpy().astype(np.uint8))


# --------------------------------------------------------------------------- bad layouts


def expect(root: Path, match: str, path: Path):
    with pytest.raises(LayoutError, match=match) as e:
        read_layout(root)
    assert str(path) in str(e.value)
    assert isinstance(e.value, UsadError)


def test_missing_folder(tmp_path):
    expect(tmp_path / "nope", "does not exist", tmp_path / "nope")


@pytest.mark.parametrize("folder", ["validation/good", "test/good", "test/structural_anomalies", "train/good"])
def test_loco_missing_folder(loco, tmp_path, folder):
    root = copy(loco, tmp_path)
    shutil.rmtree(root / folder)
    expect(root, "missing", root / folder)


def test_loco_image_without_mask_folder(loco, tmp_path):
    root = copy(loco, tmp_path)
    shutil.rmtree(root / "ground_truth" / "logical_anomalies" / "001")
    expect(root, "has no masks", root / "ground_truth" / "logical_anomalies" / "001")


def test_loco_unknown_test_folder(loco, tmp_path):
    root = copy(loco, tmp_path)
    (root / "test" / "scratches").mkdir()
    expect(root, "not an MVTec LOCO test folder", root / "test" / "scratches")


@pytest.mark.parametrize("edit,match", [
    (lambda c: "not json", "cannot read"),
    (lambda c: {"a": 1}, "non-empty JSON list"),
    (lambda c: [{k: v for k, v in c[0].items() if k != "pixel_value"}], "must be an object with keys"),
    (lambda c: [dict(c[0], pixel_value=0)], "pixel_value must be an int in 1..255"),
    (lambda c: [c[0], dict(c[1], pixel_value=c[0]["pixel_value"])], "is also"),
    (lambda c: [dict(c[2], saturation_threshold=1)], "relative saturation_threshold must be a float"),
    (lambda c: [dict(c[2], saturation_threshold=1.5)], "relative saturation_threshold must be a float"),
    (lambda c: [dict(c[0], saturation_threshold=12.0)], "absolute saturation_threshold must be an int"),
    (lambda c: [dict(c[0], relative_saturation="no")], "relative_saturation must be true or false"),
])
def test_malformed_defects_config(loco, tmp_path, edit, match):
    root = copy(loco, tmp_path)
    path = root / "defects_config.json"
    new = edit(json.loads(path.read_text()))
    path.write_text(new if isinstance(new, str) else json.dumps(new))
    expect(root, match, path)


def test_loco_without_defects_config(loco, tmp_path):
    root = copy(loco, tmp_path)
    (root / "defects_config.json").unlink()
    expect(root, "is missing", root / "defects_config.json")


def test_bad_region_png(loco, tmp_path):
    root = copy(loco, tmp_path)
    layout = read_layout(root)
    item = layout.test[2]
    png = item.masks[0]
    arr = np.asarray(Image.open(png)).copy()
    Image.fromarray(np.where(arr > 0, 7, 0).astype(np.uint8)).save(png)          # value not in the config
    with pytest.raises(LayoutError, match="does not list") as e:
        load_gt(item, SIZE, layout.defects)
    assert str(png) in str(e.value)
    arr[0, 0] = 1                                                                   # two positive values
    Image.fromarray(arr).save(png)
    with pytest.raises(LayoutError, match="exactly one defect pixel_value"):
        read_region(png, layout.defects)
    png.unlink()
    with pytest.raises(LayoutError, match="has no mask"):
        load_gt(item, SIZE)


def test_mvtec_missing_mask(coalad, tmp_path):
    root = copy(coalad, tmp_path)
    mask = sorted((root / "ground_truth").rglob("*_mask.png"))[0]
    mask.unlink()
    expect(root, "has no mask", mask)


def test_mvtec_without_normal_test_images(coalad, tmp_path):
    root = copy(coalad, tmp_path)
    shutil.rmtree(root / "test" / "good")
    expect(root, "no normal test images", root / "test" / "good")
