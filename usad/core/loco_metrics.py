"""MVTec LOCO AD metrics as the LOCO paper and the seed systems (CSAD, AeCSAD, NPGMF) report them.

- ``loco_image_aurocs``  image AUROC of each anomaly type against the good test images
  (logical_anomalies vs good, structural_anomalies vs good) and their mean;
- ``loco_metrics``       those and the AU-sPRO at FPR 0.05 (``usad.core.spro``) of a
  ``Layout``'s test set, from anomaly maps and image scores.

MVTec's evaluation code scores an image by the maximum of its anomaly map;
``loco_metrics`` does the same when no image scores are given.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from usad.core.data.dataset import NORMAL_KIND
from usad.core.data.layouts import Layout, TestImage
from usad.core.metrics import MetricError, _as_numpy, _check_maps, image_auroc
from usad.core.spro import SPRO_FPR_LIMIT, layout_regions, loco_au_spro


def loco_image_aurocs(layout_items: Sequence[TestImage], scores) -> dict[str, float]:
    """Image AUROC of each anomalous test folder against the good images, and their mean.

    On a LOCO layout: ``{"logical_anomalies": .., "structural_anomalies": .., "mean": ..}`` (the mean
    of the two, as MVTec's code and the seed papers report it). On any layout, one entry per defect
    folder present, ``mean`` over them. ``scores``: one per item, in ``layout_items`` order.
    """
    scores = _as_numpy(scores, "scores").reshape(-1).astype(np.float64)
    if len(scores) != len(layout_items):
        raise MetricError(f"got {len(scores)} image scores for {len(layout_items)} test images")
    defects = np.array([t.defect for t in layout_items])
    labels = np.array([t.label for t in layout_items])
    good = labels == 0
    if not good.any():
        raise MetricError(f"no {NORMAL_KIND} test image: image AUROC needs normal images")
    out = {}
    for kind in sorted(set(defects[labels == 1].tolist())):
        chosen = good | (defects == kind) & (labels == 1)
        out[kind] = image_auroc(labels[chosen], scores[chosen])
    if not out:
        raise MetricError("no anomalous test image: image AUROC needs anomalous images")
    out["mean"] = float(np.mean(list(out.values())))
    return out


def max_scores(maps) -> np.ndarray:
    """MVTec LOCO's image score: the maximum of each anomaly map."""
    maps = _check_maps(maps)
    return maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)


def loco_metrics(layout: Layout, maps, scores=None, size: int | None = None,
                 fpr_limit: float = SPRO_FPR_LIMIT) -> dict[str, dict[str, float]]:
    """``{"image_auroc": loco_image_aurocs(...), "au_spro": loco_au_spro(...)}`` of a LOCO layout.

    ``maps``: (n, H, W), one per ``layout.test`` item in order; ``size``: the evaluation size the
    maps have (square), or None when they have the images' own size (MVTec's protocol).
    ``scores``: image scores, default the maximum of each map.
    """
    maps = _check_maps(maps)
    if len(maps) != len(layout.test):
        raise MetricError(f"got {len(maps)} maps for the {len(layout.test)} test images of {layout.root}")
    if size is not None and maps.shape[1:] != (size, size):
        raise MetricError(f"maps are {maps.shape[1]} x {maps.shape[2]} but size={size}")
    scores = max_scores(maps) if scores is None else scores
    regions = layout_regions(layout, size)
    return {"image_auroc": loco_image_aurocs(layout.test, scores),
            "au_spro": loco_au_spro(layout.test, maps, regions, fpr_limit)}
