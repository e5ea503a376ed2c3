"""sPRO and LOCO image AUROC, checked three ways:
(a) against MVTec's own evaluation code, run unmodified (tools/loco_eval_harness.py) on the same maps;
(b) with saturation = region area, AU-sPRO equals usad.core.metrics.au_pro (PRO);
(c) hand-computed small cases and a brute-force threshold sweep."""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from usad.core.data.layouts import DefectConfig, TestImage, load_gt, read_layout
from usad.core.data.loco_synthetic import make_synthetic_loco
from usad.core.loco_metrics import loco_image_aurocs, loco_metrics, max_scores
from usad.core.metrics import MetricError, au_pro
from usad.core.spro import (Region, au_spro, layout_regions, loco_au_spro, loco_regions, saturation_area,
                            spro_curve)

import loco_eval_harness as harness

SIZE = 96


@pytest.fixture(scope="module")
def loco(tmp_path_factory) -> Path:
    return make_synthetic_loco(tmp_path_factory.mktemp("loco"), size=SIZE, seed=5, n_train=1, n_validation=1,
                               n_test_good=6, n_logical=9, n_structural=6)


def noisy_maps(layout, size: int, seed: int = 0) -> np.ndarray:
    """Smooth noise plus a bump of random strength on each image's defects: realistic, tie-free maps."""
    rng = np.random.default_rng(seed)
    maps = []
    for t in layout.test:
        m = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 2)
        gt = load_gt(t, size).astype(float)
        maps.append(m + rng.uniform(0.0, 2.5) * ndimage.gaussian_filter(gt, 1.5))
    return np.stack(maps).astype(np.float32)


# --------------------------------------------------------------------------- (a) MVTec's code


def require_official():
    authors = harness.DEFAULT_AUTHORS
    missing = None
    if not (authors / harness.SCRIPT).is_file():
        missing = f"MVTec's LOCO evaluation code not found at {authors} (../shared/authors/mvtec_loco_eval)"
    elif importlib.util.find_spec("tifffile") is None:
        missing = ("tifffile is not installed (MVTec's code reads the maps with it): "
                   "pip install -r requirements-test.txt")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must have ../shared beside the checkout and requirements-test.txt installed")
        pytest.skip(missing)
    return authors


@pytest.fixture(scope="module")
def official(loco, tmp_path_factory):
    authors = require_official()
    layout = read_layout(loco)
    maps = noisy_maps(layout, SIZE)
    result = harness.compare(authors, loco, maps, tmp_path_factory.mktemp("work"))
    return {"layout": layout, "maps": maps, "result": result, "authors": authors}


def test_official_points_lie_on_our_exact_curve(official):
    """Every (FPR, mean sPRO) point MVTec's code computed (all test images) lies on our curve."""
    layout, maps = official["layout"], official["maps"]
    per_threshold = official["result"]["official"]["localization"]["per_threshold"]
    f_off, s_off = np.array(per_threshold["fp_rates"]), np.array(per_threshold["mean_spros"])
    fpr, spro = spro_curve(maps, layout_regions(layout))
    assert len(f_off) > 50
    for f, s in zip(f_off, s_off):
        lo = spro[np.flatnonzero(fpr >= f - 1e-12)[0]]      # a vertical segment at f spans [lo, hi]
        hi = spro[np.flatnonzero(fpr <= f + 1e-12)[-1]]     # a horizontal one has lo == hi
        assert lo - 1e-9 <= s <= hi + 1e-9, (f, s, lo, hi)


def test_au_spro_matches_official_within_its_curve_approximation(official):
    """Their AU-sPRO@0.05 is a chord approximation (adaptive thresholds, neighbours <= 0.01 apart) of
    our exact area: measured differences ~1e-4; bound checked: 0.005 (= max distance / 2)."""
    ours = official["result"]["ours"]["au_spro"]
    theirs = official["result"]["official"]["localization"]["auc_spro"]
    diffs = {k: abs(theirs[k]["0.05"] - ours[k]) for k in ("logical_anomalies", "structural_anomalies", "mean")}
    print("AU-sPRO@0.05 |official - ours|:", diffs)
    assert max(diffs.values()) <= 0.005, diffs
    assert 0 < ours["mean"] < 1


def test_their_integration_of_our_curve_is_our_number(official):
    """Their trapezoid (with its interpolation at FPR 0.05) on our exact vertices gives our AU-sPRO:
    the only difference left is which curve points are integrated."""
    sys.path.insert(0, str(official["authors"]))
    try:
        from src.util import trapz          # their function, run, not copied
    finally:
        sys.path.remove(str(official["authors"]))
    layout, maps = official["layout"], official["maps"]
    regions = layout_regions(layout)
    good = [i for i, t in enumerate(layout.test) if not t.label]
    for kind in ("logical_anomalies", "structural_anomalies"):
        images = good + [i for i, t in enumerate(layout.test) if t.defect == kind]
        fpr, spro = spro_curve(maps, regions, images)
        assert trapz(fpr, spro, 0.05) / 0.05 == pytest.approx(au_spro(maps, regions, images=images), abs=1e-12)


def test_image_auroc_matches_official(official):
    theirs = official["result"]["official"]["classification"]["auc_roc"]
    ours = official["result"]["ours"]["image_auroc"]
    assert set(ours) == {"logical_anomalies", "structural_anomalies", "mean"}
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-12), k


def test_image_auroc_ties_departure(official):
    """Departure, pinned: with tied image scores MVTec's ROC counts a good image tied with an anomalous one
    as ranked below it (their stable sort puts good images first); ours counts a tie as half (roc_auc_score)."""
    sys.path.insert(0, str(official["authors"]))
    try:
        from src.util import compute_classification_auc_roc
    finally:
        sys.path.remove(str(official["authors"]))
    items = [TestImage(Path("g0.png"), 0, "good"), TestImage(Path("g1.png"), 0, "good"),
             TestImage(Path("l0.png"), 1, "logical_anomalies"), TestImage(Path("s0.png"), 1, "structural_anomalies")]
    ours = loco_image_aurocs(items, [0.3, 0.5, 0.5, 0.9])
    assert ours["logical_anomalies"] == 0.75 and compute_classification_auc_roc([0.3, 0.5], [0.5]) == 1.0
    assert ours["structural_anomalies"] == 1.0 == compute_classification_auc_roc([0.3, 0.5], [0.9])


def test_harness_records_commit_and_refuses_other_names(official, loco, tmp_path):
    assert official["result"]["authors_commit"] == harness.PINNED_COMMIT
    with pytest.raises(harness.HarnessError, match="accepts only"):
        harness.run_official(official["authors"], loco, official["maps"], tmp_path, object_name="coal")
    with pytest.raises(harness.HarnessError, match="image size"):
        harness.run_official(official["authors"], loco, official["maps"][:, :50, :50], tmp_path)


def test_harness_cli(official, loco, tmp_path):
    np.savez(tmp_path / "maps.npz", maps=official["maps"])
    out = tmp_path / "result.json"
    assert harness.main(["--authors", str(official["authors"]), "--data", str(loco), "--maps",
                         str(tmp_path / "maps.npz"), "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["ours"] == json.loads(json.dumps(official["result"]["ours"]))
    assert harness.main(["--authors", str(tmp_path), "--data", str(loco), "--maps", str(tmp_path / "maps.npz"),
                         "--work", str(tmp_path / "w"), "--out", str(out)]) == 2


# --------------------------------------------------------------------------- (b) sPRO = PRO


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_saturation_at_area_is_pro(quantised, limit):
    """Regions = 8-connected components of the masks, saturation = their area: AU-sPRO == au_pro."""
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 40, 40), bool)
    for i in range(1, 6):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, 34, 2)
            masks[i, y:y + rng.integers(2, 7), x:x + rng.integers(2, 7)] = True
    maps = rng.normal(0, 1, masks.shape) + 1.5 * masks * rng.uniform(0, 1, (6, 1, 1))
    if quantised:                                          # many ties between normal and region pixels
        maps = np.round(maps * 4) / 4
    regions = []
    for i in range(len(masks)):
        comp, n = ndimage.label(masks[i], np.ones((3, 3)))
        regions += [Region.from_mask(i, comp == c, (comp == c).sum()) for c in range(1, n + 1)]
    assert au_spro(maps, regions, limit) == pytest.approx(au_pro(masks, maps, limit), abs=1e-12)


def test_relative_one_on_a_layout_is_pro(loco, tmp_path):
    """On the generated scenes with every defect relative 1.0, sPRO is PRO over the regions (regions are
    single components that do not touch, checked here)."""
    root = Path(shutil.copytree(loco, tmp_path / "pushpins"))
    config = json.loads((root / "defects_config.json").read_text())
    for c in config:
        c.update(relative_saturation=True, saturation_threshold=1.0)
    (root / "defects_config.json").write_text(json.dumps(config))
    layout = read_layout(root)
    masks = np.stack([load_gt(t, SIZE) for t in layout.test])
    regions = layout_regions(layout)
    n_components = sum(ndimage.label(m, np.ones((3, 3)))[1] for m in masks)
    assert n_components == len(regions)
    maps = noisy_maps(layout, SIZE, seed=3)
    assert au_spro(maps, regions, 0.3) == pytest.approx(au_pro(masks, maps, 0.3), abs=1e-9)


# --------------------------------------------------------------------------- (c) by hand


def two_images():
    """Image 0 normal [.1 .2 / .3 .4]; image 1: region {.9, .5}, normals {.6, .05}."""
    maps = np.array([[[0.1, 0.2], [0.3, 0.4]], [[0.9, 0.5], [0.6, 0.05]]])
    return maps, np.array([False, False, True, True]), np.array([0, 1])


def test_hand_computed_curve():
    maps, _, pixels = two_images()
    # saturation 2 (= area): sPRO 1/2 once .9 is positive, 1 once .5 is; 6 normal pixels, one (.6) above .5
    fpr, spro = spro_curve(maps, [Region(1, pixels, 2.0)])
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 6, 1 / 6, 1])
    assert spro.tolist() == pytest.approx([0, 0, 0.5, 0.5, 1, 1])
    assert au_spro(maps, [Region(1, pixels, 2.0)], 1.0) == pytest.approx(0.5 / 6 + 5 / 6)     # 11/12
    assert au_spro(maps, [Region(1, pixels, 2.0)], 0.1) == pytest.approx(0.5)
    # saturation 1: one covered pixel saturates the region
    assert au_spro(maps, [Region(1, pixels, 1.0)], 1.0) == pytest.approx(1.0)
    # two regions are averaged: the same region twice, saturations 1 and 2 -> (1 + 11/12) / 2
    assert au_spro(maps, [Region(1, pixels, 1.0), Region(1, pixels, 2.0)], 1.0) == pytest.approx((1 + 11 / 12) / 2)


def test_hand_computed_tie():
    """A region pixel tied with a normal pixel: both turn positive together (a diagonal segment)."""
    maps = np.array([[[0.5, 0.5], [0.1, 0.1]]])
    fpr, spro = spro_curve(maps, [Region(0, np.array([0]), 1.0)])
    # vertices (0, 0) -> (1/3, 1) -> (1, 1): area = 1/2 * 1/3 + 2/3
    assert au_spro(maps, [Region(0, np.array([0]), 1.0)], 1.0) == pytest.approx(1 / 6 + 2 / 3)


def test_images_restrict_fpr_and_regions():
    maps, _, pixels = two_images()
    regions = [Region(1, pixels, 2.0)]
    # without image 0 the normals are {.6, .05}: .6 is above .5 -> FPR 1/2 where sPRO reaches 1
    assert au_spro(maps, regions, 1.0, images=[1]) == pytest.approx(0.5 * 0.5 + 0.5)
    with pytest.raises(MetricError, match="at least one ground-truth region"):
        au_spro(maps, regions, images=[0])


def test_brute_force_sweep():
    """Random maps, overlapping regions, several saturations: the sort-based curve's area equals a
    naive loop over every distinct score as threshold (map > t)."""
    rng = np.random.default_rng(7)
    maps = np.round(rng.normal(0, 1, (4, 12, 12)), 1)       # ties
    regions = [Region(1, rng.choice(144, 20, replace=False), 7.0), Region(1, rng.choice(144, 9, replace=False), 9.0),
               Region(3, rng.choice(144, 30, replace=False), 3.5)]
    normal = np.ones(maps.shape, bool)
    for r in regions:
        normal[r.image].reshape(-1)[r.pixels] = False
    thresholds = np.r_[np.inf, np.unique(maps)[::-1], -np.inf]
    f = [(maps[normal] > t).mean() for t in thresholds]
    s = [np.mean([min((maps[r.image].reshape(-1)[r.pixels] > t).sum() / r.saturation, 1) for r in regions])
         for t in thresholds]
    f, s = np.array(f), np.array(s)
    for limit in (0.05, 0.2, 1.0):
        k = np.searchsorted(f, limit, "right")
        x, y = f[:k], s[:k]
        if k < len(f):
            x, y = np.r_[x, limit], np.r_[y, s[k - 1] + (s[k] - s[k - 1]) * (limit - f[k - 1]) / (f[k] - f[k - 1])]
        assert au_spro(maps, regions, limit) == pytest.approx(np.trapezoid(y, x) / limit, abs=1e-12), limit


def test_bounded_chunks_give_the_same_curve(monkeypatch):
    import usad.core.spro as spro_mod
    rng = np.random.default_rng(2)
    maps = rng.normal(0, 1, (9, 16, 16)).astype(np.float32)
    regions = [Region(i, rng.choice(256, 10, replace=False), 4.0) for i in (2, 5, 8)]
    whole = spro_curve(maps, regions)
    monkeypatch.setattr(spro_mod, "CHUNK_PIXELS", 300)      # one image a chunk
    chunked = spro_curve(maps, regions)
    assert all(np.array_equal(a, b) for a, b in zip(whole, chunked))


def test_saturation_area_rules():
    rel = DefectConfig("scratch", 1, 0.3, True)
    absolute = DefectConfig("missing", 2, 40, False)
    assert saturation_area(rel, 5) == 1.0            # int(0.3 * 5) = int(1.5)
    assert saturation_area(rel, 100) == 30.0
    assert saturation_area(absolute, 100) == 40.0
    assert saturation_area(absolute, 25) == 25.0     # min(threshold, area)
    assert saturation_area(absolute, 100, scale=0.25) == 10.0
    assert saturation_area(rel, 2) == 1.0            # int(0.6) = 0: at least one pixel (departure)


def test_loco_regions_at_native_and_resized_size(loco):
    layout = read_layout(loco)
    native = loco_regions(layout.test, layout.defects)
    pngs = [p for t in layout.test for p in t.masks]
    assert len(native) == len(pngs)
    by_value = {d.name: d for d in layout.defects.values()}
    for r in native:
        d = by_value[r.defect]
        expected = int(d.saturation_threshold * r.area) if d.relative_saturation else min(d.saturation_threshold,
                                                                                              r.area)
        assert r.saturation == max(expected, 1)
        assert layout.test[r.image].label == 1
    half = loco_regions(layout.test, layout.defects, SIZE // 2)
    assert len(half) == len(native)
    for a, b in zip(native, half):
        assert abs(b.area * 4 - a.area) <= 0.35 * a.area + 8
        d = by_value[a.defect]
        if not d.relative_saturation:
            assert b.saturation == min(d.saturation_threshold / 4, b.area)


def test_loco_au_spro_subsets(loco):
    layout = read_layout(loco)
    maps = noisy_maps(layout, SIZE, seed=4)
    regions = layout_regions(layout)
    out = loco_au_spro(layout.test, maps, regions)
    good = [i for i, t in enumerate(layout.test) if not t.label]
    for kind in ("logical_anomalies", "structural_anomalies"):
        chosen = [i for i, t in enumerate(layout.test) if t.defect == kind]
        kept = [r for r in regions if r.image in chosen]
        sub = np.array(good + chosen)
        remap = {old: new for new, old in enumerate(sub)}
        assert out[kind] == pytest.approx(au_spro(maps[sub], [Region(remap[r.image], r.pixels, r.saturation)
                                                              for r in kept]), abs=1e-12)
    assert out["mean"] == pytest.approx((out["logical_anomalies"] + out["structural_anomalies"]) / 2)


def test_loco_image_aurocs_by_hand():
    kinds = [("good", 0), ("good", 1), ("logical_anomalies", 0), ("logical_anomalies", 1), ("structural_anomalies", 0)]
    items = [TestImage(Path(f"{k}{i}.png"), int(k != "good"), k) for k, i in kinds]
    # good 0.2, 0.6; logical 0.5 (beats 1 of 2), 0.9 (beats 2) -> 3/4; structural 0.1 -> 0
    out = loco_image_aurocs(items, [0.2, 0.6, 0.5, 0.9, 0.1])
    assert out == pytest.approx({"logical_anomalies": 0.75, "structural_anomalies": 0.0, "mean": 0.375})
    with pytest.raises(MetricError, match="3 image scores for 5"):
        loco_image_aurocs(items, [0.1, 0.2, 0.3])


def test_loco_metrics_at_an_eval_size(loco):
    layout = read_layout(loco)
    maps = noisy_maps(layout, 48, seed=6)
    out = loco_metrics(layout, maps, size=48)
    assert out["image_auroc"] == loco_image_aurocs(layout.test, max_scores(maps))
    assert out["au_spro"] == loco_au_spro(layout.test, maps, layout_regions(layout, 48))
    with pytest.raises(MetricError, match="size=40"):
        loco_metrics(layout, maps, size=40)


def test_bad_inputs():
    maps, _, pixels = two_images()
    with pytest.raises(MetricError, match="image 5"):
        au_spro(maps, [Region(5, pixels, 1.0)])
    with pytest.raises(MetricError, match="fpr_limit"):
        au_spro(maps, [Region(1, pixels, 1.0)], 0)
    with pytest.raises(MetricError, match="normal pixels"):
        au_spro(maps[1:], [Region(0, np.arange(4), 1.0)])
    with pytest.raises(MetricError, match="NaN"):
        au_spro(np.full((1, 2, 2), np.nan), [Region(0, pixels, 1.0)])
