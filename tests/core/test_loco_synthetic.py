"""Generated MVTec-LOCO-layout scenes: layout, masks, defects_config.json, determinism, refusal to overwrite."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from usad.core.data.dataset import DatasetError
from usad.core.data.loco_synthetic import (DEFECTS, LOGICAL_KINDS, STRUCTURAL_KINDS, draw_scene, main,
                                           make_synthetic_loco)

SIZE = 96
COUNTS = dict(n_train=3, n_validation=2, n_test_good=2, n_logical=6, n_structural=4)


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_synthetic_loco(tmp_path_factory.mktemp("loco"), size=SIZE, seed=3, **COUNTS)


def mask_folders(root: Path, kind: str) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.png")) for d in sorted((root / "ground_truth" / kind).iterdir())}


def test_layout_and_counts(scenes):
    assert scenes.name == "pushpins"
    names = set(files(scenes))
    expected = {"defects_config.json"}
    expected |= {f"train/good/{i:03d}.png" for i in range(3)} | {f"validation/good/{i:03d}.png" for i in range(2)}
    expected |= {f"test/good/{i:03d}.png" for i in range(2)}
    expected |= {f"test/logical_anomalies/{i:03d}.png" for i in range(6)}
    expected |= {f"test/structural_anomalies/{i:03d}.png" for i in range(4)}
    assert expected <= names
    masks = names - expected
    assert all(n.startswith("ground_truth/") and n.endswith(".png") for n in masks)
    for kind, n in (("logical_anomalies", 6), ("structural_anomalies", 4)):
        folders = mask_folders(scenes, kind)
        assert list(folders) == [f"{i:03d}" for i in range(n)]          # one folder per anomalous image
        for pngs in folders.values():                                     # 000.png, 001.png ... without gaps
            assert [p.name for p in pngs] == [f"{j:03d}.png" for j in range(len(pngs))] and pngs
    assert [p.name for p in scenes.parent.iterdir()] == ["pushpins"]     # no temporary folder left


def test_defects_config_as_mvtec_writes_it(scenes):
    config = json.loads((scenes / "defects_config.json").read_text())
    assert [c["defect_name"] for c in config] == [d["defect_name"] for d in DEFECTS]
    assert len({c["pixel_value"] for c in config}) == len(config)
    for c in config:
        assert set(c) == {"defect_name", "pixel_value", "saturation_threshold", "relative_saturation"}
        assert 1 <= c["pixel_value"] <= 255
        if c["relative_saturation"]:
            assert isinstance(c["saturation_threshold"], float) and 0 < c["saturation_threshold"] <= 1
        else:
            assert isinstance(c["saturation_threshold"], int) and c["saturation_threshold"] >= 1


def read_regions(scenes: Path, kind: str, stem: str) -> list[tuple[str, np.ndarray]]:
    by_value = {c["pixel_value"]: c["defect_name"] for c in json.loads((scenes / "defects_config.json").read_text())}
    out = []
    for png in sorted((scenes / "ground_truth" / kind / stem).glob("*.png")):
        with Image.open(png) as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE), png
            m = np.asarray(im)
        values = set(np.unique(m).tolist()) - {0}
        assert len(values) == 1, f"{png}: one positive value per PNG, got {values}"
        out.append((by_value[values.pop()], m > 0))
    return out


@pytest.mark.parametrize("kind,kinds", [("logical_anomalies", LOGICAL_KINDS),
                                        ("structural_anomalies", STRUCTURAL_KINDS)])
def test_masks_cover_exactly_the_changed_pixels(scenes, kind, kinds):
    """The written image differs from the same scene drawn without its defect only inside the masks."""
    seen = set()
    for i in range(COUNTS["n_logical" if kind == "logical_anomalies" else "n_structural"]):
        stem = f"{i:03d}"
        regions = read_regions(scenes, kind, stem)
        names = {n for n, _ in regions}
        assert names == {kinds[i % len(kinds)]}
        seen |= names
        written = cv2.imread(str(scenes / "test" / kind / f"{stem}.png"))
        clean, _ = draw_scene(SIZE, SIZE, 3, kind, i, None)
        changed = (written != clean).any(axis=2)
        union = np.any([m for _, m in regions], axis=0)
        assert changed.any(), stem
        assert not (changed & ~union).any(), f"{kind}/{stem}: pixels changed outside the masks"
        for name, m in regions:      # each region is mostly changed pixels (a scratch's or stain's edge may not be)
            assert (changed & m).sum() >= 0.5 * m.sum(), (stem, name)
        # regions are single 8-connected components that do not touch each other (sPRO = PRO at saturation 1.0)
        assert cv2.connectedComponents(union.astype(np.uint8), connectivity=8)[0] - 1 == len(regions), stem
        if names == {"misplaced_block"}:
            assert len(regions) == 2 and not (regions[0][1] & regions[1][1]).any()   # old place, new place
    assert seen == set(kinds)        # each anomaly kind present


def test_normal_images_have_every_part(scenes):
    """A good image equals its scene drawn without defect; pins count 6 (yellow blobs)."""
    for split, folder, n in (("train", "train/good", 3), ("validation", "validation/good", 2),
                             ("test_good", "test/good", 2)):
        for i in range(n):
            img = cv2.imread(str(scenes / folder / f"{i:03d}.png"))
            assert np.array_equal(img, draw_scene(SIZE, SIZE, 3, split, i, None)[0])
            yellow = ((img[..., 2] > 180) & (img[..., 1] > 150) & (img[..., 0] < 100)).astype(np.uint8)
            assert cv2.connectedComponents(yellow)[0] - 1 == 6


def test_deterministic_by_seed(scenes, tmp_path):
    again = make_synthetic_loco(tmp_path / "a", size=SIZE, seed=3, **COUNTS)
    assert files(again) == files(scenes)
    other = make_synthetic_loco(tmp_path / "b", size=SIZE, seed=4, **COUNTS)
    assert files(other)["train/good/000.png"] != files(scenes)["train/good/000.png"]


def test_refuses_to_overwrite(tmp_path):
    out = make_synthetic_loco(tmp_path, n_train=1, n_validation=0, n_test_good=0, n_logical=0, n_structural=0,
                              size=48)
    before = files(out)
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        make_synthetic_loco(tmp_path, n_train=2, size=48)
    assert files(out) == before
    out = make_synthetic_loco(tmp_path, n_train=2, n_validation=0, n_test_good=0, n_logical=0, n_structural=0,
                              size=48, overwrite=True)
    assert sorted(files(out)) == ["defects_config.json", "train/good/000.png", "train/good/001.png"]


@pytest.mark.parametrize("kwargs,match", [({"n_train": -1}, "non-negative"), ({"size": 16}, "too small"),
                                          ({"category": "../x"}, "plain folder name"), ({"n_logical": 1.5}, "int")])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(DatasetError, match=match):
        make_synthetic_loco(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_cli(tmp_path, capsys):
    argv = ["--root", str(tmp_path), "--size", "64x48", "--n-train", "1", "--n-logical", "3", "--n-structural", "2"]
    assert main(argv) == 0
    with Image.open(tmp_path / "pushpins" / "test" / "logical_anomalies" / "002.png") as im:
        assert im.size == (64, 48)
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
