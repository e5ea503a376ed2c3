"""Score fusion (CSAD Sec. 3.5; AeCSAD Eq. 9-10): trimmed z-scores from validation statistics, then summed.

S_hat = (S - mu_s) / sigma_s, with mu_s and sigma_s the mean and (population) standard deviation of the validation
scores strictly between their 20% and 80% quantiles (numpy's linear quantiles), as the code's ``normalize2``; a
zero sigma leaves the score unscaled (the code's check). Two levels, as in the code: each grid of the patch
histogram is z-scored and the grids summed (the branch score, whose validation scores are z-scored the same way),
then the patch-histogram and LGST branch scores are z-scored and summed.
"""

from __future__ import annotations

import logging

import numpy as np

from usad.core.errors import UsadError

log = logging.getLogger(__name__)


class FusionError(UsadError, ValueError):
    """Validation scores that give no statistics (none, or not finite)."""


def trimmed_stats(val: np.ndarray, low: float, high: float, name: str = "scores") -> tuple[float, float]:
    """(mean, std) of the validation scores strictly inside their (low, high) quantiles."""
    val = np.asarray(val, dtype=np.float64).ravel()
    if val.size == 0 or not np.isfinite(val).all():
        raise FusionError(f"{name}: the validation scores are {'empty' if val.size == 0 else 'not all finite'}; "
                          f"the score fusion needs validation images (split.validation)")
    lo, hi = np.quantile(val, low), np.quantile(val, high)
    kept = val[(val > lo) & (val < hi)]
    if kept.size == 0:  # too few (or tied) validation scores: the code would give NaN; use them all
        log.warning("%s: no validation score lies strictly inside the (%g, %g) quantiles (%d scores): the trimmed "
                    "statistics use all of them", name, low, high, val.size)
        kept = val
    return float(kept.mean()), float(kept.std())


def zscore(scores: np.ndarray, stats: tuple[float, float]) -> np.ndarray:
    mean, std = stats
    out = np.asarray(scores, dtype=np.float64) - mean
    return out / std if std != 0 else out


def fit_fusion(val_columns: np.ndarray, low: float, high: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of each column of (N_val, M) validation scores and the fused (summed z) validation scores.

    Returns (stats (M, 2), fused_val (N_val,)).
    """
    val_columns = np.asarray(val_columns, dtype=np.float64).reshape(len(val_columns), -1)
    stats = np.array([trimmed_stats(val_columns[:, j], low, high, f"{name}[{j}]")
                      for j in range(val_columns.shape[1])])
    return stats, fuse(val_columns, stats)


def fuse(columns: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Sum over columns of each column's z-score: (N, M) scores, (M, 2) statistics -> (N,)."""
    columns = np.asarray(columns, dtype=np.float64).reshape(len(columns), -1)
    return np.sum([zscore(columns[:, j], tuple(stats[j])) for j in range(columns.shape[1])], axis=0)
