"""Evaluation metrics (reference Sec. 7).

- ``image_auroc``   Image-AUROC, scikit-learn ``roc_auc_score`` on image labels.
- ``pixel_auroc``   Pixel-AUROC over every pixel of every test map; equal to
  ``roc_auc_score`` but computed as a Mann-Whitney U statistic in bounded memory.
- ``pro_auc_usad``  PRO-AUC exactly as the authors compute it (the paper's
  Table 1 column): anomalous images, per-image uint8 normalisation, 200
  thresholds, FPR < 0.3 rescaled to [0, 1].
- ``au_pro``        the standard MVTec AD AU-PRO: raw scores, exact PRO curve,
  integrated up to FPR = 0.3 and divided by 0.3.
- ``compute_all``   all four, sharing the sorted pixel scores.

Inputs are numpy arrays or torch tensors: labels / scores (n,), masks (n, H, W)
binary (0/1 or bool; (n, 1, H, W) is accepted), maps (n, H, W) float.
Large stacks (1,754 maps of 406 x 406) are processed a chunk of images at a time:
the pixel scores are copied once (float32; float64 maps stay float64) and sorted, never an index array over
all pixels.

Why one module of ~600 lines: each metric has a NumPy reference and a device (torch) path that must give the
same number bit for bit (``tests/test_device_paths.py``); both share the input checks and the curve
arithmetic (``PositiveCounts``, the Mann-Whitney AUC, the PRO curve, the histogram PRO-AUC), and
``compute_all`` picks between them. Split in two, the device half would import the private half of the
other, or a third module would hold the shared arithmetic away from both of its readers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from usad.core.errors import UsadError

CHUNK = 64                 # images per chunk in the chunked passes
PRO_STEPS = 200            # authors' number of PRO thresholds
PRO_FPR_LIMIT = 0.3        # FPR limit of both PRO metrics
LEVELS = np.arange(256) / 255  # the values of a uint8-normalised map, as the authors' m / 255
# 8-connectivity inside each image, no connection across images of a stack
# (scikit-image ``label(connectivity=2)`` per image).
_STACK_STRUCTURE = np.zeros((3, 3, 3), bool)
_STACK_STRUCTURE[1] = True


class MetricError(UsadError, ValueError):
    """Inputs a metric cannot be computed on (one class only, NaN, shape mismatch)."""


# ----------------------------------------------------------------------------- input checks

def _as_numpy(x, name: str) -> np.ndarray:
    """numpy array from a numpy array, a torch tensor or a sequence (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):   # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == object:
        raise MetricError(f"{name} must be numeric; got an object array")
    return x


def _image_stack(x, name: str) -> np.ndarray:
    """(n, H, W) view of a stack of maps or masks; (n, 1, H, W) loses its channel axis."""
    x = _as_numpy(x, name)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise MetricError(f"{name} must have shape (n, H, W); got {x.shape}")
    return x


def _first_nonfinite(values: np.ndarray) -> int | None:
    """Index along axis 0 of the first entry containing NaN or inf, else None.

    Uses per-image min / max (NaN propagates through both, inf is an extreme),
    which needs no full-size boolean temporary.
    """
    if not np.issubdtype(values.dtype, np.floating):
        return None
    flat = values.reshape(len(values), -1)
    bad = np.zeros(len(values), bool)
    for s in range(0, len(values), CHUNK):
        block = flat[s:s + CHUNK]
        bad[s:s + CHUNK] = ~(np.isfinite(block.min(axis=1)) & np.isfinite(block.max(axis=1)))
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else None


def _check_maps(maps, name: str = "maps") -> np.ndarray:
    maps = _image_stack(maps, name)
    if not (np.issubdtype(maps.dtype, np.floating) or np.issubdtype(maps.dtype, np.integer)):
        raise MetricError(f"{name} must be a float array; got dtype {maps.dtype}")
    i = _first_nonfinite(maps)
    if i is not None:
        raise MetricError(f"{name}[{i}] contains NaN or inf; fix the anomaly map of image {i} before evaluating")
    return maps


def _binary_masks(masks) -> np.ndarray:
    """Masks as a bool (n, H, W) array; values other than 0 / 1 raise."""
    masks = _image_stack(masks, "masks")
    if masks.dtype == bool:
        return masks
    if masks.dtype in (np.uint8, np.int8):           # 0 / 1 bytes are bools already: no copy
        for s in range(0, len(masks), CHUNK):
            block = masks[s:s + CHUNK]
            if block.max() > 1 or block.min() < 0:
                wrong = (block != 0) & (block != 1)
                i = int(np.flatnonzero(wrong.reshape(len(block), -1).any(axis=1))[0])
                raise MetricError(f"masks must be binary (0 / 1 or bool); masks[{s + i}] contains "
                                  f"{block[wrong][0]!r}. Threshold 0 / 255 masks first, e.g. masks >= 128")
        return masks.view(bool)
    out = np.empty(masks.shape, bool)
    for s in range(0, len(masks), CHUNK):
        block = masks[s:s + CHUNK]
        np.not_equal(block, 0, out=out[s:s + CHUNK])
        if np.count_nonzero(block[out[s:s + CHUNK]] != 1):
            wrong = (block != 0) & (block != 1)
            i = int(np.flatnonzero(wrong.reshape(len(block), -1).any(axis=1))[0])
            raise MetricError(f"masks must be binary (0 / 1 or bool); masks[{s + i}] contains "
                             f"{block[wrong][0]!r}. Threshold soft masks first, e.g. masks >= 0.5")
    return out


def _check_masks_maps(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Validated (bool masks, maps) of equal shape."""
    masks_np, maps_np = _image_stack(masks, "masks"), _image_stack(maps, "maps")
    if masks_np.shape != maps_np.shape:
        raise MetricError(f"masks and maps must have the same shape; got masks {masks_np.shape} "
                         f"and maps {maps_np.shape}")
    return _binary_masks(masks_np), _check_maps(maps_np)


def _check_labels(labels, n: int | None = None, name: str = "labels") -> np.ndarray:
    labels = _as_numpy(labels, name).reshape(-1)
    if n is not None and len(labels) != n:
        raise MetricError(f"{name} has {len(labels)} entries but there are {n} images")
    if not np.isin(labels, (0, 1)).all():
        raise MetricError(f"{name} must be 0 (normal) or 1 (anomalous); got values {np.unique(labels)[:10]}")
    return labels.astype(bool)


def _need_both(n_pos: int, n_neg: int, metric: str, what: str) -> None:
    if n_pos == 0 or n_neg == 0:
        have = "anomalous" if n_pos else "normal"
        raise MetricError(f"{metric} needs both normal and anomalous {what}; got only {have} {what} "
                         f"({n_neg} normal, {n_pos} anomalous)")


# ----------------------------------------------------------------------------- image level

def image_auroc(labels, scores) -> float:
    """Image-AUROC: ``roc_auc_score(labels, scores)``."""
    scores = _as_numpy(scores, "scores").reshape(-1)
    labels = _check_labels(labels, len(scores))
    i = _first_nonfinite(scores.astype(np.float64, copy=False))
    if i is not None:
        raise MetricError(f"scores[{i}] is NaN or inf; fix the score of image {i} before evaluating")
    _need_both(int(labels.sum()), int((~labels).sum()), "image_auroc", "images")
    return float(roc_auc_score(labels, scores))


# ----------------------------------------------------------------------------- pixel level

def _float_maps(block: np.ndarray) -> np.ndarray:
    """Pixel scores as float32, or float64 when given (never loses precision)."""
    return block.astype(np.float64 if block.dtype == np.float64 else np.float32, copy=False)


class PositiveCounts(NamedTuple):
    """Per unique positive score u (ascending): everything the pixel metrics need."""
    values: np.ndarray     # unique positive scores, ascending
    count: np.ndarray      # positives equal to u
    weight: np.ndarray     # summed PRO weights of those positives (empty if not asked for)
    neg_lt: np.ndarray     # negatives < u
    neg_le: np.ndarray     # negatives <= u
    n_neg: int


def _positive_counts(masks: np.ndarray, maps: np.ndarray, component_weights: bool = False) -> PositiveCounts:
    """Rank every positive score among the negatives, in bounded memory.

    All scores are copied once and sorted (the only large allocation); negatives
    < u are then (all scores < u) - (positives < u), so no negative-only array or
    index array over all pixels is built. The PRO weight of a positive pixel is
    1 / (n_components * component_size): summing the weights of covered pixels
    gives the mean per-component overlap. Components are 8-connected, per image.
    """
    n_pos = int(np.count_nonzero(masks))
    n_neg = masks.size - n_pos
    _need_both(n_pos, n_neg, "pixel metrics", "pixels")
    dtype = np.float64 if maps.dtype == np.float64 else np.float32
    everything, pos = np.empty(maps.size, dtype), np.empty(n_pos, dtype)
    weights = np.empty(n_pos) if component_weights else None
    i_all = i_pos = n_components = 0
    for s in range(0, len(maps), CHUNK):
        m, k = _float_maps(maps[s:s + CHUNK]), masks[s:s + CHUNK]
        everything[i_all:i_all + m.size] = m.ravel()
        p = m[k]
        pos[i_pos:i_pos + len(p)] = p
        if component_weights:
            comp, n = ndimage.label(k, _STACK_STRUCTURE)
            size = np.bincount(comp.ravel())
            weights[i_pos:i_pos + len(p)] = 1.0 / size[comp[k]]
            n_components += n
        i_all, i_pos = i_all + m.size, i_pos + len(p)
    everything.sort()
    if component_weights:
        order = np.argsort(pos, kind="stable")
        pos, weights = pos[order], weights[order] / n_components
    else:
        pos.sort()
    starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
    ends = np.r_[starts[1:], n_pos]
    values = pos[starts]
    # sorted queries: searchsorted walks the big array in order (10x faster than unsorted)
    neg_lt = np.searchsorted(everything, values, "left") - starts
    neg_le = np.searchsorted(everything, values, "right") - ends
    weight = np.add.reduceat(weights, starts) if component_weights else np.empty(0)
    return PositiveCounts(values, ends - starts, weight, neg_lt, neg_le, n_neg)


def _mann_whitney_auc(c: PositiveCounts) -> float:
    """AUC = sum_p (#neg < p + 0.5 #neg == p) / (n_pos n_neg), exact with ties (integer sums)."""
    twice_u = int(np.sum(c.count * (c.neg_lt + c.neg_le), dtype=np.int64))
    return twice_u / (2.0 * int(c.count.sum()) * c.n_neg)


def pixel_auroc(masks, maps, device=None) -> float:
    """Pixel-AUROC over all pixels of all maps, equal to ``roc_auc_score``.

    Mann-Whitney U with ties: the scores are sorted once (a float32 copy), the
    positives are ranked among them with ``searchsorted``. On a device (``device``,
    or maps on a GPU): the same counts with torch (see "on the device").
    """
    if metrics_device(maps, device) is not None:
        return _pixel_auroc_device(masks, maps, metrics_device(maps, device))
    masks, maps = _check_masks_maps(masks, maps)
    return _mann_whitney_auc(_positive_counts(masks, maps))


# ----------------------------------------------------------------------------- authors' PRO-AUC

def _uint8_levels(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max normalisation, scaled to uint8 by truncation (0..255).

    The authors' ``(m - min) / (max - min)``, then ``(m * 255).astype(np.uint8)``,
    in float32. Truncation (not rounding) reproduces the golden fixture's
    PRO-AUC: 0.9352479 vs 0.9352405 (rounding gives 0.94142, +0.0062); float32
    and float64 normalisation agree there. A constant map becomes all zeros.
    """
    m = maps.astype(np.float32, copy=False)
    lo = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - lo
    span = np.where(span > 0, span, np.float32(1))   # constant map: (m - lo) is 0 already
    return (((m - lo) / span) * np.float32(255)).astype(np.uint8)


def _level_histograms(masks: np.ndarray, maps: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over the uint8 levels of the given images: (negative-pixel histogram (256,),
    per-component histograms (n_components, 256))."""
    neg_hist = np.zeros(256, np.int64)
    comp_hists = []
    for s in range(0, len(images), CHUNK):
        idx = images[s:s + CHUNK]
        levels, k = _uint8_levels(maps[idx]), masks[idx]
        comp, n = ndimage.label(k, _STACK_STRUCTURE)     # 0 = background
        code = comp.ravel().astype(np.int64) * 256 + levels.ravel()
        hist = np.bincount(code, minlength=(n + 1) * 256).reshape(n + 1, 256)
        neg_hist += hist[0]
        comp_hists.append(hist[1:])
    return neg_hist, np.concatenate(comp_hists)


def _rescaled_fpr_auc(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Authors' AUC: keep FPR < limit, divide FPR by its largest kept value, sort, trapezoid."""
    keep = fpr < fpr_limit
    if not keep.any():
        raise MetricError(f"pro_auc_usad: no threshold reaches FPR < {fpr_limit}; the PRO curve is empty")
    f, p = fpr[keep], pro[keep]
    if f.max() == 0:
        # Departure (undefined in the authors' code, 0 / 0): every kept threshold has
        # no false positive, so the curve is the point set {FPR = 0}; return its best PRO.
        return float(p.max())
    f = f / f.max()
    order = np.lexsort((p, f))
    return float(np.trapezoid(p[order], f[order]))


def pro_auc_usad(masks, maps, labels=None, device=None) -> float:
    """PRO-AUC as the authors compute it (Sec. 7, the paper's Table 1 column).

    Anomalous images only (``labels == 1``, or images with a non-empty mask when
    ``labels`` is None). Maps are normalised per image to uint8 levels / 255;
    thresholds ``np.arange(min, max, (max - min) / 200)`` over all those maps;
    a pixel is predicted anomalous when ``map > t``. PRO(t) = mean over all
    8-connected ground-truth components of the covered fraction, FPR(t) =
    false positives / negative pixels of the same images.

    Vectorised over thresholds: a map has only 256 levels, so per-component
    level histograms times the (thresholds x levels) matrix ``level > t`` give
    every PRO and FPR at once. On a device (``device``, or maps on a GPU): the histograms with torch.
    """
    if metrics_device(maps, device) is not None:
        return _pro_auc_usad_device(masks, maps, labels, metrics_device(maps, device))
    masks, maps = _check_masks_maps(masks, maps)
    anomalous = _anomalous_images(masks, labels, len(maps))
    return _pro_auc_from_histograms(*_level_histograms(masks, maps, np.flatnonzero(anomalous)))


def _anomalous_images(masks: np.ndarray, labels, n: int) -> np.ndarray:
    """The images pro_auc_usad uses: ``labels == 1``, or those with a non-empty mask when labels is None."""
    anomalous = masks.reshape(n, -1).any(axis=1) if labels is None else _check_labels(labels, n)
    if not anomalous.any():
        raise MetricError("pro_auc_usad needs both normal and anomalous pixels; got no anomalous image "
                         "(label 1, or a non-empty mask when labels is None)")
    return anomalous


def _pro_auc_from_histograms(neg_hist: np.ndarray, comp_hists: np.ndarray) -> float:
    """The authors' PRO-AUC from the uint8-level histograms of the negative pixels (256,) and of each
    ground-truth component (n_components, 256) of the anomalous images."""
    n_neg = int(neg_hist.sum())
    _need_both(int(comp_hists.sum()), n_neg, "pro_auc_usad", "pixels in the anomalous images")

    used = np.flatnonzero(neg_hist + comp_hists.sum(axis=0))
    lo, hi = LEVELS[used[0]], LEVELS[used[-1]]
    if hi == lo:
        raise MetricError("pro_auc_usad: all anomalous maps are constant, there is no threshold to sweep")
    thresholds = np.arange(lo, hi, (hi - lo) / PRO_STEPS)
    above = (LEVELS[None, :] > thresholds[:, None]).astype(np.int64)   # (T, 256): level > t

    sizes = comp_hists.sum(axis=1)
    pro = ((comp_hists @ above.T) / sizes[:, None]).mean(axis=0)
    fpr = (above @ neg_hist) / n_neg
    return _rescaled_fpr_auc(fpr, pro, PRO_FPR_LIMIT)


# ----------------------------------------------------------------------------- standard AU-PRO

def _pro_curve(c: PositiveCounts) -> tuple[np.ndarray, np.ndarray]:
    """Exact (FPR, PRO) curve of ``map >= t`` over all thresholds, from t = +inf to -inf.

    PRO only changes at positive scores. For unique positive values
    u_1 > u_2 > ..., PRO is P_{i-1} for t just above u_i (FPR = #neg > u_i / n_neg)
    and P_i at t = u_i (FPR = #neg >= u_i / n_neg); between positive values the
    curve is horizontal, so these two points per value, (0, 0) and (1, 1) are its
    vertices (ties join the two points of a value by a straight segment).
    """
    pro_after = np.cumsum(c.weight[::-1])                      # descending u
    pro_before = np.r_[0.0, pro_after[:-1]]
    fpr_above = (c.n_neg - c.neg_le[::-1]) / c.n_neg           # #neg > u
    fpr_at = (c.n_neg - c.neg_lt[::-1]) / c.n_neg              # #neg >= u
    fpr = np.r_[0.0, np.column_stack([fpr_above, fpr_at]).ravel(), 1.0]
    pro = np.r_[0.0, np.column_stack([pro_before, pro_after]).ravel(), pro_after[-1]]
    return fpr, pro


def _area_until(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under (x, y), x non-decreasing from 0, up to x_max (interpolated there)."""
    k = int(np.searchsorted(x, x_max, "right"))      # points with x <= x_max
    xs, ys = x[:k], y[:k]
    if k < len(x):
        x0, y0, x1, y1 = x[k - 1], y[k - 1], x[k], y[k]
        xs = np.r_[xs, x_max]
        ys = np.r_[ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)]
    return float(np.trapezoid(ys, xs))


def _au_pro_from(c: PositiveCounts, fpr_limit: float) -> float:
    fpr, pro = _pro_curve(c)
    return _area_until(fpr, pro, fpr_limit) / fpr_limit


def au_pro(masks, maps, fpr_limit: float = PRO_FPR_LIMIT, device=None) -> float:
    """Standard MVTec AD AU-PRO: all images, raw scores, exact PRO curve (``map >= t``),
    area up to FPR = ``fpr_limit`` divided by ``fpr_limit``.

    PRO = mean over all 8-connected ground-truth components of all images of
    the covered fraction; FPR = false positives / all negative pixels.
    """
    if not 0 < fpr_limit <= 1:
        raise MetricError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    if metrics_device(maps, device) is not None:
        return _au_pro_device(masks, maps, fpr_limit, metrics_device(maps, device))
    masks, maps = _check_masks_maps(masks, maps)
    return _au_pro_from(_positive_counts(masks, maps, component_weights=True), fpr_limit)


# ----------------------------------------------------------------------------- on the device (torch)
#
# The same four metrics with torch on a device (a GPU: the 290M pixels of CoalAD's test set are GPU
# work), a chunk of images at a time. Every count is an exact integer, as in the NumPy code above,
# which then computes the curves and areas from them, so the results are the NumPy ones. Connected components
# (scipy.ndimage.label) are labelled on the host, from the masks, which are small (bool) and stay there.

DEVICE_CHUNK_PIXELS = 2 ** 26  # pixels per chunk: 407 maps of 406 x 406; ~2 GB of device buffers at most


def metrics_device(maps, device=None):
    """Where the pixel metrics run: ``device`` if given, else the GPU a torch ``maps`` tensor is on;
    None = NumPy on the host (the reference path)."""
    import torch

    if device is not None:
        return torch.device(device)
    if isinstance(maps, torch.Tensor) and maps.device.type != "cpu":
        return maps.device
    return None


def _device_maps(maps):
    """(n, H, W) view of torch or NumPy maps, without copying them to the host."""
    import torch

    if not isinstance(maps, torch.Tensor):
        return _image_stack(maps, "maps")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise MetricError(f"maps must have shape (n, H, W); got {tuple(maps.shape)}")
    if maps.is_complex() or maps.dtype == torch.bool:
        raise MetricError(f"maps must be a float array; got dtype {maps.dtype}")
    return maps


def _device_inputs(masks, maps):
    """(bool NumPy masks, maps as given) of equal shape; checked as ``_check_masks_maps`` does."""
    masks, maps = _image_stack(masks, "masks"), _device_maps(maps)
    if masks.shape != tuple(maps.shape):
        raise MetricError(f"masks and maps must have the same shape; got masks {masks.shape} "
                         f"and maps {tuple(maps.shape)}")
    return _binary_masks(masks), maps


def _device_chunks(images: np.ndarray, pixels_per_image: int):
    step = max(1, DEVICE_CHUNK_PIXELS // pixels_per_image)
    return [images[s:s + step] for s in range(0, len(images), step)]


def _score_dtype(maps):
    """float32 for the pixel scores, float64 for float64 maps (as ``_float_maps``)."""
    import torch

    return torch.float64 if str(maps.dtype) in ("float64", "torch.float64") else torch.float32


def _maps_on(maps, idx: np.ndarray, device):
    """Maps ``idx`` on ``device`` as float32 (float64 maps stay float64); NaN / inf names the image."""
    import torch

    dtype = _score_dtype(maps)
    if isinstance(maps, torch.Tensor):
        block = maps[torch.as_tensor(idx, device=maps.device)]
    else:
        block = torch.from_numpy(np.ascontiguousarray(maps[idx]))
    block = block.to(device, non_blocking=True).to(dtype)
    finite = torch.isfinite(block).flatten(1).all(1)
    if not bool(finite.all()):
        i = int(idx[int(torch.nonzero(~finite)[0, 0])])
        raise MetricError(f"maps[{i}] contains NaN or inf; fix the anomaly map of image {i} before evaluating")
    return block


def _uint8_levels_torch(m):
    """``_uint8_levels`` in torch: the same float32 operations, so the same levels."""
    import torch

    m = m.float()
    lo = m.amin(dim=(1, 2), keepdim=True)
    span = m.amax(dim=(1, 2), keepdim=True) - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    return (((m - lo) / span) * 255.0).to(torch.uint8)


class _DeviceScan:
    """What one pass over the maps on the device collects, a chunk of images at a time.

    - ``positives``: every positive score (and, with ``weights``, its PRO weight 1 / component size);
    - with ``pro_images`` (bool per image): the uint8-level histograms of the authors' PRO-AUC over
      those images, negatives (256,) and per component (n_components, 256).
    """

    def __init__(self, masks: np.ndarray, maps, device, positives: bool = True, weights: bool = False,
                 pro_images: np.ndarray | None = None):
        import torch

        self.n_components, weight_parts = 0, []
        self.neg_hist, comp_hists = torch.zeros(256, dtype=torch.int64, device=device), []
        n_pos = int(np.count_nonzero(masks)) if positives else 0
        if positives:
            _need_both(n_pos, masks.size - n_pos, "pixel metrics", "pixels")
        self.pos = torch.empty(n_pos, dtype=_score_dtype(maps), device=device)
        images = np.arange(len(masks)) if positives else np.flatnonzero(pro_images)
        i_pos = 0
        for idx in _device_chunks(images, masks[0].size):
            m, k_host = _maps_on(maps, idx, device), masks[idx]
            k = torch.from_numpy(k_host).to(device, non_blocking=True)
            if positives:
                p = m[k]
                self.pos[i_pos:i_pos + len(p)] = p
                i_pos += len(p)
            if weights or pro_images is not None:
                comp, n = ndimage.label(k_host, _STACK_STRUCTURE)   # 0 = background
                comp_pos = comp[k_host]
            if weights:
                weight_parts.append(1.0 / np.bincount(comp.ravel())[comp_pos])
                self.n_components += n
            if pro_images is not None:
                levels, use = _uint8_levels_torch(m), torch.from_numpy(pro_images[idx]).to(device)[:, None, None]
                self.neg_hist += torch.bincount(levels[~k & use].long(), minlength=256)
                on = torch.from_numpy(pro_images[idx][np.nonzero(k_host)[0]]).to(device)  # positives of PRO images
                code = torch.from_numpy(comp_pos).to(device)[on] * 256 + levels[k & use].long()
                hist = torch.bincount(code, minlength=(n + 1) * 256).view(n + 1, 256)[1:]
                comp_hists.append(hist[hist.sum(1) > 0])   # components of the other images are empty here
        self.weights = torch.from_numpy(np.concatenate(weight_parts)).to(device) if weights else None
        self.comp_hists = torch.cat(comp_hists) if comp_hists else None

    def level_histograms(self) -> tuple[np.ndarray, np.ndarray]:
        return self.neg_hist.cpu().numpy(), self.comp_hists.cpu().numpy()

    def positive_counts(self, masks: np.ndarray, maps, device) -> PositiveCounts:
        """``_positive_counts`` on the device: the positives sorted once, every pixel binned among the
        distinct positive scores (binary search + histogram: no sort of all pixels)."""
        import torch

        n_neg = masks.size - len(self.pos)
        pos, order = torch.sort(self.pos, stable=True)
        values, count = torch.unique_consecutive(pos, return_counts=True)
        ends = torch.cumsum(count, 0)
        starts = ends - count
        # pixel v goes to bin #(values <= v) and to bin #(values < v); v < values[j] iff the first is <= j,
        # v <= values[j] iff the second is: cumulative bin counts give #all < u and #all <= u for every u
        by_le = torch.zeros(len(values) + 1, dtype=torch.int64, device=device)
        by_lt = torch.zeros_like(by_le)
        for idx in _device_chunks(np.arange(len(masks)), masks[0].size):
            v = _maps_on(maps, idx, device).flatten()
            by_le += torch.bincount(torch.searchsorted(values, v, right=True), minlength=len(by_le))
            by_lt += torch.bincount(torch.searchsorted(values, v), minlength=len(by_lt))
        all_lt, all_le = torch.cumsum(by_le, 0)[:-1], torch.cumsum(by_lt, 0)[:-1]
        weight = np.empty(0)
        if self.weights is not None:   # summed per value in sorted order, as np.add.reduceat does
            weight = torch.segment_reduce(self.weights[order] / self.n_components, "sum", lengths=count).cpu().numpy()
        host = lambda t: t.cpu().numpy()
        return PositiveCounts(host(values), host(count), weight, host(all_lt - starts), host(all_le - ends), n_neg)


def _pixel_auroc_device(masks, maps, device) -> float:
    masks, maps = _device_inputs(masks, maps)
    return _mann_whitney_auc(_DeviceScan(masks, maps, device).positive_counts(masks, maps, device))


def _au_pro_device(masks, maps, fpr_limit: float, device) -> float:
    masks, maps = _device_inputs(masks, maps)
    counts = _DeviceScan(masks, maps, device, weights=True).positive_counts(masks, maps, device)
    return _au_pro_from(counts, fpr_limit)


def _pro_auc_usad_device(masks, maps, labels, device) -> float:
    masks, maps = _device_inputs(masks, maps)
    anomalous = _anomalous_images(masks, labels, len(masks))
    return _pro_auc_from_histograms(*_DeviceScan(masks, maps, device, positives=False,
                                                 pro_images=anomalous).level_histograms())


def _compute_all_device(labels, scores, masks, maps, device) -> dict[str, float]:
    masks, maps = _device_inputs(masks, maps)
    labels_np = _check_labels(labels, len(maps))
    out = {"image_auroc": image_auroc(labels_np.astype(np.int64), scores)}
    anomalous = _anomalous_images(masks, labels_np.astype(np.int64), len(masks))
    scan = _DeviceScan(masks, maps, device, weights=True, pro_images=anomalous)   # one pass for all three
    counts = scan.positive_counts(masks, maps, device)
    out["pixel_auroc"] = _mann_whitney_auc(counts)
    out["aupro_0.3"] = _au_pro_from(counts, PRO_FPR_LIMIT)
    out["pro_auc_usad"] = _pro_auc_from_histograms(*scan.level_histograms())
    return {k: out[k] for k in ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3")}


# ----------------------------------------------------------------------------- all together

def compute_all(labels, scores, masks, maps, device=None) -> dict[str, float]:
    """Image-AUROC, Pixel-AUROC, the authors' PRO-AUC and AU-PRO@0.3 (scores sorted once).

    On a device (``device``, or maps on a GPU): one pass over the maps collects what all three
    pixel metrics need, a second bins every pixel (the image AUROC, on 1,754 scores, stays NumPy).
    """
    if metrics_device(maps, device) is not None:
        return _compute_all_device(labels, scores, masks, maps, metrics_device(maps, device))
    masks, maps = _check_masks_maps(masks, maps)
    labels_np = _check_labels(labels, len(maps))
    out = {"image_auroc": image_auroc(labels_np.astype(np.int64), scores)}
    counts = _positive_counts(masks, maps, component_weights=True)
    out["pixel_auroc"] = _mann_whitney_auc(counts)
    out["aupro_0.3"] = _au_pro_from(counts, PRO_FPR_LIMIT)
    out["pro_auc_usad"] = pro_auc_usad(masks, maps, labels_np.astype(np.int64))
    return {k: out[k] for k in ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3")}
