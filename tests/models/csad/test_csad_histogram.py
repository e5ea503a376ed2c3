"""Patch histogram: brute-force histograms and distances, and the official code's scores on its own segmentations
(tools/golden_csad.py fixture)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

import golden_csad as gc
from usad.models.csad import fusion as fz
from usad.models.csad.histogram import HistogramError, PatchHistogram, cell_offsets, class_histograms


def brute_histograms(labels: np.ndarray, k: int, patch: int) -> np.ndarray:
    """Cells every `patch` pixels plus one flush with the edge, column by column; shares of classes 1..k-1."""
    n, h, w = labels.shape
    ys = list(range(0, h - patch + 1, patch)) + ([h - patch] if (h - patch) % patch else [])
    xs = list(range(0, w - patch + 1, patch)) + ([w - patch] if (w - patch) % patch else [])
    out = []
    for img in labels:
        row = []
        for x in xs:
            for y in ys:
                cell = img[y:y + patch, x:x + patch]
                row += [(cell == c).sum() / cell.size for c in range(1, k)]
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("size,patch", [(16, 16), (16, 8), (20, 8), (18, 5)])
def test_histograms_match_brute_force(size, patch):
    rng = np.random.default_rng(size * patch)
    labels = rng.integers(0, 4, size=(3, size, size))
    ours = class_histograms(torch.from_numpy(labels), 4, patch).numpy()
    np.testing.assert_allclose(ours, brute_histograms(labels, 4, patch), atol=1e-12)
    assert len(cell_offsets(size, patch)) ** 2 * 3 == ours.shape[1]


def test_mahalanobis_matches_scipy_with_pinv():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 3, size=(6, 12, 12))
    test = rng.integers(0, 3, size=(4, 12, 12))
    det = PatchHistogram(3, [12, 6], ["mahalanobis", "mahalanobis"]).fit(torch.from_numpy(train))
    ours = det.scores(torch.from_numpy(test)).numpy()
    for j, patch in enumerate((12, 6)):
        h_train, h_test = brute_histograms(train, 3, patch), brute_histograms(test, 3, patch)
        inv = np.linalg.pinv(np.cov(h_train.T), rcond=1e-15)
        mean = h_train.mean(0)
        ref = []
        for h in h_test:
            with np.errstate(invalid="ignore"):
                d = mahalanobis(h, mean, inv)
            ref.append(np.sqrt(((h - mean) ** 2).sum()) if np.isnan(d) else d)
        np.testing.assert_allclose(ours[:, j], ref, rtol=1e-6)


def test_layout_distance_by_hand():
    """AeCSAD Eq. 3 on a 2 x 2 map with 1 x 1 cells: mean over classes of the L2 norm over cells."""
    train = torch.tensor([[[1, 2], [0, 1]], [[1, 1], [2, 0]]])
    det = PatchHistogram(3, [1], ["layout"]).fit(train)
    test = torch.tensor([[[2, 2], [2, 2]]])
    mean = (brute_histograms(train.numpy(), 3, 1)).mean(0).reshape(4, 2)     # cells x classes
    h = brute_histograms(test.numpy(), 3, 1).reshape(4, 2)
    expected = np.mean([np.linalg.norm(h[:, c] - mean[:, c]) for c in range(2)])
    assert det.scores(test)[0, 0].item() == pytest.approx(expected, rel=1e-12)


def test_bad_inputs():
    with pytest.raises(HistogramError, match="at least 2"):
        PatchHistogram(3, [4], ["mahalanobis"]).fit(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(HistogramError, match="same length"):
        PatchHistogram(3, [4, 2], ["mahalanobis"])
    with pytest.raises(HistogramError, match="unknown distance"):
        PatchHistogram(3, [4], ["cosine"])


def test_official_scores_on_their_segmentations():
    """Their PatchClassDetector distances and branch scores, from the segmentations their code produced."""
    rec, man = gc.read_fixture(gc.fixture_folder())
    maps = dict(zip(man["hist_segmap_order"], torch.from_numpy(rec["hist_segmaps"].astype(np.int64))))
    det = PatchHistogram(man["num_classes"], [256, 128], ["mahalanobis", "mahalanobis"])
    det.fit(torch.stack([maps[f] for f in man["files"]["train"]]))
    np.testing.assert_allclose(det.gaussians[0].mean.numpy(), rec["hist_params_hist_mean"][1:], atol=1e-12)
    ours = det.scores(torch.stack([maps[f] for f in man["hist_dist_order"]])).numpy()
    np.testing.assert_allclose(ours, rec["hist_dists"], rtol=1e-6, atol=1e-9)
    n_val = len(man["files"]["validation"])
    _, branch_val = fz.fit_fusion(ours[:n_val], 0.2, 0.8, "patch histogram")
    np.testing.assert_allclose(branch_val, rec["hist_val_branch"], rtol=1e-6, atol=1e-9)
