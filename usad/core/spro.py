"""sPRO: the saturated per-region overlap of MVTec LOCO AD (Bergmann et al., IJCV 2022, Sec. 5.2).

For a ground-truth region R (one defect, one mask PNG) with saturation threshold s
(pixels), at an anomaly threshold t the predicted anomalous pixels are ``map > t`` and

    sPRO_R(t) = min(|R ∩ {map > t}| / s, 1)                                   # Eq. (sPRO)

The sPRO curve is the mean of sPRO_R over all regions of all anomalous images against
the false-positive rate FPR(t) = (normal pixels with map > t) / (normal pixels), where
the normal pixels are those of every image in the evaluated set outside all of its
regions (the good test images and the defect-free part of the anomalous ones, as
MVTec's evaluation code counts them). AU-sPRO is the area under that curve up to
FPR = 0.05, divided by 0.05.

The curve is computed exactly, sorted rather than thresholded:
- the sPRO of region R grows by (min(k / s, 1) - min((k - 1) / s, 1)) when its k-th
  highest pixel turns positive, so giving each region pixel that weight (divided by
  the number of regions) makes the mean sPRO at t the sum of the weights of the
  region pixels above t: one sort of the region pixels, no loop over thresholds;
- sPRO only changes at region scores, so the curve's vertices are, for each
  distinct region score u (descending), (FPR of normals > u, sPRO before u) and
  (FPR of normals >= u, sPRO after u); the normals are counted against those values
  a chunk of images at a time (bounded memory: one chunk of maps, never a copy of
  all scores).
MVTec's code instead evaluates an adaptively refined set of thresholds (50 to start,
refined until neighbouring curve points are 0.01 apart); its area is a chord
approximation of this one.

Saturation thresholds follow MVTec's defects_config.json rules (their ``src/image.py``):
relative: ``int(threshold * region_area)``; absolute: ``min(threshold, region_area)``.
``loco_regions`` builds the regions of a ``Layout`` at an evaluation size; see its
docstring for the (measured) departures that size brings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from usad.core.data.layouts import LOCO_TYPES, DefectConfig, Layout, TestImage, read_region
from usad.core.data.dataset import mask_transform
from usad.core.metrics import MetricError, _area_until, _check_maps

log = logging.getLogger(__name__)

SPRO_FPR_LIMIT = 0.05      # MVTec LOCO's integration limit of the reported AU-sPRO
MIN_SATURATION = 1.0       # pixels; see saturation_area
CHUNK_PIXELS = 2 ** 24     # normal pixels sorted at a time (64 MB of float32 scores)


@dataclass(frozen=True)
class Region:
    """One ground-truth region: the flat pixel indices (into ``H * W``) of image ``image``,
    its saturation threshold in pixels, and its defect name."""
    image: int
    pixels: np.ndarray
    saturation: float
    defect: str = ""

    @classmethod
    def from_mask(cls, image: int, mask: np.ndarray, saturation: float, defect: str = "") -> "Region":
        return cls(image, np.flatnonzero(np.asarray(mask).reshape(-1)), float(saturation), defect)

    @property
    def area(self) -> int:
        return len(self.pixels)


# --------------------------------------------------------------------------- saturation


def saturation_area(defect: DefectConfig, area: int, scale: float = 1.0) -> float:
    """Saturation threshold in pixels of a region of ``area`` pixels (MVTec's ``get_saturation_area``).

    relative: ``int(threshold * area)``; absolute: ``min(threshold * scale, area)``, where ``scale`` is
    (evaluation pixels) / (original pixels): 1 at the original size, where this is MVTec's rule exactly.
    Departure: at least ``MIN_SATURATION`` pixel (MVTec's code divides by zero, giving NaN sPRO values
    that its integration then drops, when ``int(threshold * area)`` or an absolute threshold is 0).
    """
    if defect.relative_saturation:
        s = float(int(defect.saturation_threshold * area))
    else:
        s = min(defect.saturation_threshold * scale, float(area))
    return max(s, MIN_SATURATION)


def resize_region(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool region mask at ``size x size``: PIL nearest, as dataset.TestDataset resizes masks."""
    out = mask_transform(size)(Image.fromarray(mask.astype(np.uint8) * 255))
    return out.numpy().astype(bool)


def loco_regions(items: Sequence[TestImage], defects: dict[int, DefectConfig], size: int | None = None
                 ) -> list[Region]:
    """The sPRO regions of a LOCO layout's test items (``Layout.test``), at evaluation size ``size``.

    ``Region.image`` is the item's index in ``items`` (the row of its map in the stack given to
    ``spro_curve``). ``size=None``: the masks' own size, MVTec's protocol (maps at the image size).
    With ``size``, each region is resized nearest to ``size x size`` and its saturation computed
    there: a relative threshold from the resized area, an absolute one scaled by the ratio of pixel
    counts (departure: MVTec evaluates at the original size only). A region that vanishes in the
    resize (fewer pixels than the scale) is left out with a warning.
    """
    regions, dropped = [], 0
    for index, item in enumerate(items):
        if not item.label:
            continue
        for png in item.masks:
            config, mask = read_region(png, defects)
            scale = 1.0
            if size is not None:
                scale = size * size / mask.size
                mask = resize_region(mask, size)
            if not mask.any():
                dropped += 1
                continue
            area = int(mask.sum())
            regions.append(Region.from_mask(index, mask, saturation_area(config, area, scale), config.name))
    if dropped:
        log.warning("%d ground-truth region(s) vanish at %s x %s px and are left out of sPRO", dropped, size, size)
    return regions


def layout_regions(layout: Layout, size: int | None = None) -> list[Region]:
    """``loco_regions`` of a LOCO ``Layout``'s test items."""
    if layout.kind != "loco":
        raise MetricError(f"sPRO needs an MVTec LOCO layout (defects_config.json); {layout.root} is {layout.kind}")
    return loco_regions(layout.test, layout.defects, size)


# --------------------------------------------------------------------------- the curve


def _score_dtype(maps: np.ndarray):
    """Scores are compared in the maps' own float type (float32 stays float32); integers as float64."""
    return maps.dtype if np.issubdtype(maps.dtype, np.floating) else np.float64


def _region_weights(maps: np.ndarray, regions: Sequence[Region]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of all region pixels and their sPRO weights (sum of weights above t = mean sPRO at t)."""
    dtype = _score_dtype(maps)
    scores = [maps[r.image].reshape(-1)[r.pixels].astype(dtype, copy=False) for r in regions]
    sizes = np.array([len(s) for s in scores])
    if (sizes == 0).any():
        raise MetricError(f"region {int(np.flatnonzero(sizes == 0)[0])} has no pixel")
    owner = np.repeat(np.arange(len(regions)), sizes)
    values = np.concatenate(scores)
    order = np.lexsort((-values, owner))                         # by region, each highest score first
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    rank = np.arange(len(values)) - starts + 1                   # k = 1 .. area within its region
    sat = np.array([r.saturation for r in regions], np.float64)[owner]
    gain = np.minimum(rank / sat, 1.0) - np.minimum((rank - 1) / sat, 1.0)
    weights = np.empty_like(gain)
    weights[order] = gain / len(regions)                         # rank was computed in sorted order
    return values, weights


def _normal_counts(maps: np.ndarray, regions: Sequence[Region], images: np.ndarray, u: np.ndarray):
    """For each value of ``u`` (ascending): normal pixels > u and >= u over ``images``, and their total."""
    in_region: dict[int, list[np.ndarray]] = {}
    for r in regions:
        in_region.setdefault(r.image, []).append(r.pixels)
    dtype = _score_dtype(maps)
    per_chunk = max(1, CHUNK_PIXELS // max(1, maps[0].size))
    above = np.zeros(len(u), np.int64)
    at_or_above = np.zeros(len(u), np.int64)
    total = 0
    for s in range(0, len(images), per_chunk):
        chunk = []
        for i in images[s:s + per_chunk]:
            m = maps[i].reshape(-1)
            if i in in_region:
                keep = np.ones(m.size, bool)
                keep[np.concatenate(in_region[i])] = False
                m = m[keep]
            chunk.append(m)
        normals = np.sort(np.concatenate(chunk).astype(dtype, copy=False))
        total += len(normals)
        above += len(normals) - np.searchsorted(normals, u, "right")
        at_or_above += len(normals) - np.searchsorted(normals, u, "left")
    return above, at_or_above, total


def spro_curve(maps, regions: Sequence[Region], images: Sequence[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, mean sPRO) curve, FPR ascending from (0, 0) to (1, 1).

    ``maps``: (n, H, W) anomaly maps (numpy or torch). ``regions``: the regions of the anomalous
    images (``Region.image`` indexes ``maps``). ``images``: the images of the evaluated set (FPR and
    regions restricted to them); all by default.
    """
    maps = _check_maps(maps)
    n = len(maps)
    images = np.arange(n) if images is None else np.unique(np.asarray(images, np.int64))
    if len(images) and (images.min() < 0 or images.max() >= n):
        raise MetricError(f"images must index the {n} maps; got {images.min()}..{images.max()}")
    bad = [r.image for r in regions if not 0 <= r.image < n]
    if bad:
        raise MetricError(f"a region refers to image {bad[0]}, but there are {n} maps")
    chosen = set(images.tolist())
    regions = [r for r in regions if r.image in chosen]
    if not regions:
        raise MetricError("sPRO needs at least one ground-truth region in the evaluated images")
    values, weights = _region_weights(maps, regions)
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    u = values[starts]                                            # distinct region scores, ascending
    gained = np.add.reduceat(weights, starts)
    above, at_or_above, total = _normal_counts(maps, regions, images, u)
    if total == 0:
        raise MetricError("sPRO needs normal pixels for its false-positive rate; every pixel is in a region")
    spro_after = np.cumsum(gained[::-1])                          # descending u: sPRO once u turns positive
    spro_after = np.minimum(spro_after, 1.0)                     # float round-off only
    spro_before = np.r_[0.0, spro_after[:-1]]
    fpr = np.r_[0.0, np.column_stack([above[::-1], at_or_above[::-1]]).ravel() / total, 1.0]
    spro = np.r_[0.0, np.column_stack([spro_before, spro_after]).ravel(), spro_after[-1]]
    return fpr, spro


def au_spro(maps, regions: Sequence[Region], fpr_limit: float = SPRO_FPR_LIMIT,
            images: Sequence[int] | None = None) -> float:
    """Area under the sPRO curve up to FPR ``fpr_limit`` (0.05 by default), divided by ``fpr_limit``."""
    if not 0 < fpr_limit <= 1:
        raise MetricError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    fpr, spro = spro_curve(maps, regions, images)
    return _area_until(fpr, spro, fpr_limit) / fpr_limit


def loco_au_spro(items: Sequence[TestImage], maps, regions: Sequence[Region],
                 fpr_limit: float = SPRO_FPR_LIMIT) -> dict[str, float]:
    """AU-sPRO as MVTec LOCO reports it: for each anomaly type, its images plus all good images
    (FPR over all of them, sPRO over its regions), and the mean of the two types.

    Returns ``{"logical_anomalies": .., "structural_anomalies": .., "mean": ..}``; a type without test
    images is left out and ``mean`` is over the types present.
    """
    good = [i for i, t in enumerate(items) if not t.label]
    out = {}
    for kind in LOCO_TYPES:
        chosen = [i for i, t in enumerate(items) if t.label and t.defect == kind]
        if chosen:
            out[kind] = au_spro(maps, regions, fpr_limit, images=good + chosen)
    if not out:
        raise MetricError(f"no test image of type {' or '.join(LOCO_TYPES)}: not an MVTec LOCO test set")
    out["mean"] = float(np.mean(list(out.values())))
    return out
