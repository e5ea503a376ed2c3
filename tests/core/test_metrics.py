"""Metrics (reference Sec. 7) against scikit-learn, naive brute-force sweeps and the golden fixture."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from usad.core.metrics import au_pro, compute_all, image_auroc, pixel_auroc, pro_auc_usad

from conftest import require_golden

EIGHT = np.ones((3, 3), int)


# ----------------------------------------------------------------------------- synthetic data

def blob_masks(rng, n, size, anomalous):
    """(n, size, size) uint8 masks: 1-3 random discs / rectangles in each anomalous image."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in np.flatnonzero(anomalous):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.integers(1, max(2, size // 6))
            if rng.random() < 0.5:
                masks[i] |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
            else:
                masks[i, max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = 1
    return masks


def noisy_maps(rng, masks, levels=None):
    """Maps that partially detect the masks: noise + signal inside the blobs."""
    maps = rng.random(masks.shape) + 0.8 * masks * rng.random(masks.shape)
    if levels is not None:                     # quantise -> many ties
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32)


def add_speckle_and_hot_spots(rng, masks, maps):
    """Single-pixel defects (8- and 4-connectivity then differ) and a maximum outside the
    mask of each image (the authors' FPR then never reaches 0)."""
    speckle = (rng.random(masks.shape) < 0.04) & masks.reshape(len(masks), -1).any(axis=1)[:, None, None]
    masks |= speckle.astype(masks.dtype)
    for m, k in zip(maps, masks):
        ys, xs = np.nonzero(k == 0)
        j = rng.integers(len(ys))
        m[ys[j], xs[j]] = m.max() + 1
    return masks, maps


def dataset(seed, n=6, size=20, levels=None, hard=False):
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, int)
    labels[: n // 2] = 1
    masks = blob_masks(rng, n, size, labels == 1)
    if hard:
        masks, maps = add_speckle_and_hot_spots(rng, masks, noisy_maps(rng, masks, levels))
        return (masks.reshape(n, -1).any(axis=1)).astype(int), masks, maps
    labels = (masks.reshape(n, -1).any(axis=1)).astype(int)   # a blob may be clipped away: keep it honest
    return labels, masks, noisy_maps(rng, masks, levels)


# ----------------------------------------------------------------------------- brute force references

def naive_authors_pro_auc(masks, maps, labels):
    """The authors' loop: 200 thresholds x images x regions (reference Sec. 7)."""
    amaps, gts = [], []
    for m, g, y in zip(maps, masks, labels):
        if y != 1:
            continue
        m = m.astype(np.float32)
        if m.max() > m.min():
            m = (m - m.min()) / (m.max() - m.min())
        else:
            m = np.zeros_like(m)
        amaps.append((m * 255).astype(np.uint8) / 255)
        gts.append(g.astype(bool))
    amaps, gts = np.array(amaps), np.array(gts)
    lo, hi = amaps.min(), amaps.max()
    pros, fprs = [], []
    for th in np.arange(lo, hi, (hi - lo) / 200):
        binary = amaps > th
        pro = []
        for b, g in zip(binary, gts):
            regions, n = ndimage.label(g, EIGHT)
            for r in range(1, n + 1):
                region = regions == r
                pro.append(b[region].sum() / region.sum())
        pros.append(np.mean(pro))
        fprs.append(np.logical_and(~gts, binary).sum() / (~gts).sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < 0.3
    f, p = fprs[keep], pros[keep]
    f = f / f.max()
    order = np.lexsort((p, f))
    return np.trapezoid(p[order], f[order])


def naive_au_pro(masks, maps, limit=0.3):
    """Every unique threshold, ``map >= t``, regions one by one, trapezoid with interpolation at ``limit``."""
    gts = masks.astype(bool)
    regions = [ndimage.label(g, EIGHT)[0] for g in gts]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        pro = []
        for reg, p in zip(regions, pred):
            for r in range(1, reg.max() + 1):
                pro.append(p[reg == r].mean())
        fprs.append((pred & ~gts).sum() / (~gts).sum())
        pros.append(np.mean(pro))
    x, y = [], []
    for i in range(len(fprs)):
        if fprs[i] <= limit:
            x.append(fprs[i])
            y.append(pros[i])
        else:
            x0, y0 = fprs[i - 1], pros[i - 1]
            x.append(limit)
            y.append(y0 + (pros[i] - y0) * (limit - x0) / (fprs[i] - x0))
            break
    return np.trapezoid(y, x) / limit


# ----------------------------------------------------------------------------- pixel AUROC

@pytest.mark.parametrize("levels", [None, 10, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_auroc_equals_sklearn(seed, levels):
    _, masks, maps = dataset(seed, n=8, size=24, levels=levels)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_float64_and_torch():
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 4, 16, np.ones(4, bool))
    maps = rng.random(masks.shape) + 1e-9 * masks      # float64 differences below float32 resolution
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(torch.from_numpy(masks)[:, None], torch.from_numpy(maps)) == pytest.approx(expected, abs=1e-12)


def test_image_auroc_equals_sklearn():
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 50), rng.random(50)
    assert image_auroc(torch.from_numpy(labels), scores) == roc_auc_score(labels, scores)


# ----------------------------------------------------------------------------- authors' PRO-AUC

@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_pro_auc_usad_equals_naive_loop(seed, hard):
    labels, masks, maps = dataset(seed, n=6, size=24, hard=hard)
    maps[np.flatnonzero(labels)[0]] *= 7.0              # per-image scale must not matter
    expected = naive_authors_pro_auc(masks, maps, labels)
    assert pro_auc_usad(masks, maps, labels) == pytest.approx(expected, abs=1e-12)
    assert pro_auc_usad(masks, maps) == pytest.approx(expected, abs=1e-12)   # labels from masks


def test_pro_auc_usad_constant_anomalous_map_is_zeros_not_nan():
    labels, masks, maps = dataset(3, n=6, size=24)
    maps[np.flatnonzero(labels)[0]] = 0.5
    value = pro_auc_usad(masks, maps, labels)
    assert np.isfinite(value)
    assert value == pytest.approx(naive_authors_pro_auc(masks, maps, labels), abs=1e-12)


# ----------------------------------------------------------------------------- standard AU-PRO

@pytest.mark.parametrize("levels, hard", [(None, False), (12, False), (None, True), (12, True)])
@pytest.mark.parametrize("seed", [0, 1])
def test_au_pro_equals_naive_sweep(seed, levels, hard):
    _, masks, maps = dataset(seed, n=4, size=18, levels=levels, hard=hard)
    assert au_pro(masks, maps) == pytest.approx(naive_au_pro(masks, maps), abs=1e-12)
    assert au_pro(masks, maps, fpr_limit=0.05) == pytest.approx(naive_au_pro(masks, maps, 0.05), abs=1e-12)


def test_au_pro_hand_cases():
    _, masks, _ = dataset(0, n=4, size=16)
    assert au_pro(masks, masks.astype(np.float32)) == pytest.approx(1.0)          # perfect map
    assert au_pro(masks, 1.0 - masks.astype(np.float32)) == pytest.approx(0.0)    # inverted map
    # constant map: one tie, straight line (0, 0) -> (1, 1); area up to 0.3 is 0.045 -> 0.15
    assert au_pro(masks, np.ones(masks.shape, np.float32)) == pytest.approx(0.15)


def test_compute_all_matches_individual_metrics():
    labels, masks, maps = dataset(4, n=8, size=20)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    out = compute_all(labels, scores, masks, maps)
    assert list(out) == ["image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3"]
    assert out["image_auroc"] == roc_auc_score(labels, scores)
    assert out["pixel_auroc"] == pixel_auroc(masks, maps)
    assert out["pro_auc_usad"] == pro_auc_usad(masks, maps, labels)
    assert out["aupro_0.3"] == au_pro(masks, maps)


# ----------------------------------------------------------------------------- golden fixture

def test_golden_metrics():
    """Our metrics on the authors' own outputs give the authors' numbers (1e-4: the stored maps are float16)."""
    ref = np.load(require_golden("shared") / "reference.npz")  # full-resolution maps (tests/golden stores them pooled)
    masks, maps, labels = ref["mask"], ref["m_fused"], ref["label"]
    assert pro_auc_usad(masks, maps, labels) == pytest.approx(float(ref["metric_pro_auc_official"]), abs=1e-4)
    assert pixel_auroc(masks, maps) == pytest.approx(float(ref["metric_pixel_auroc_fused"]), abs=1e-4)
    for key in ("fused", "obj", "pc"):
        assert image_auroc(labels, ref[f"s_{key}"]) == pytest.approx(float(ref[f"metric_image_auroc_{key}"]), abs=1e-9)


# ----------------------------------------------------------------------------- errors

PIXEL_METRICS = [pixel_auroc, au_pro, pro_auc_usad]


@pytest.mark.parametrize("metric", PIXEL_METRICS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_maps_name_the_image(metric, bad):
    _, masks, maps = dataset(0)
    maps[2, 5, 7] = bad
    with pytest.raises(ValueError, match=r"maps\[2\]"):
        metric(masks, maps)


def test_nonfinite_scores_name_the_image():
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        image_auroc([0, 1, 1], [0.1, np.nan, 0.3])


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_one_pixel_class_is_rejected(metric):
    _, masks, maps = dataset(0)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        metric(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        metric(np.ones_like(masks), maps)


def test_one_image_class_is_rejected():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_shape_mismatch_names_both_shapes(metric):
    _, masks, maps = dataset(0)
    with pytest.raises(ValueError, match=r"\(6, 20, 20\).*\(6, 20, 19\)"):
        metric(masks, maps[:, :, :19])


def test_non_binary_mask_is_rejected():
    _, masks, maps = dataset(0)
    soft = masks.astype(np.float32)
    soft[1, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"masks\[1\].*binary|binary.*masks\[1\]"):
        pixel_auroc(soft, maps)
    bytes_255 = masks.copy()
    bytes_255[2] *= 255
    with pytest.raises(ValueError, match=r"binary.*masks\[2\]"):
        pixel_auroc(bytes_255, maps)
