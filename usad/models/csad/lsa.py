"""Logical Synthetic Anomalies (LSA, Sec. 3.2): paste extra copies of an image's own components elsewhere.

For a labelled training image (RGB ``uint8`` image, its refined instance masks, its
semantic label map and its background mask, all at the training size), one
augmentation, as the official code computes it:

1. candidates: the instance masks larger than ``mask_min_area`` of the image that lie
   inside the labelled area (overlap ratio > ``label_overlap``);
2. ``min_aug`` times: draw a candidate (weights area^``weight_power``), drop it from
   the pool, skip it if more than ``max_unlabelled`` of its pixels are unlabelled;
   otherwise draw up to ``attempts`` placements (a centre at least ``min_distance``
   from the component's bounding-box centre, with probability ∝ distance², inside a
   ``boundary`` margin; a random whole-degree rotation about the component's centre)
   until the moved mask overlaps the background by less than ``first_overlap``, and
   paste it (the last placement drawn if none qualified);
3. ``max_aug - min_aug`` more times the same with ``extra_overlap``, pasted only when
   a placement qualified within ``attempts``.

Pasting moves the component's pixels and its labels with the same affine warp
(bilinear, as the code: label values are interpolated at the rim, then truncated).
The random draws are those of NumPy's legacy ``RandomState`` in the code's order, so
the same seed gives the code's exact augmentation (``tests/models/csad/test_csad_seg_golden.py``).
Where the code would crash (no candidate left to draw) the augmentation stops instead.
"""

from __future__ import annotations

import cv2
import numpy as np


def overlap_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∩ b| / min(|a|, |b|) over non-zero pixels (0 when they do not meet)."""
    inter = np.count_nonzero(np.logical_and(a, b))
    if inter == 0:
        return 0.0
    return inter / min(np.count_nonzero(a), np.count_nonzero(b))


def instance_masks(segments: np.ndarray, min_area: float) -> list[np.ndarray]:
    """One 0/255 mask per instance id 1..max whose area share exceeds ``min_area``."""
    out = []
    for i in range(1, int(segments.max()) + 1):
        mask = np.where(segments == i, 255, 0).astype(segments.dtype)
        if np.count_nonzero(mask) / mask.size > min_area:
            out.append(mask)
    return out


def draw_mask(masks: list[np.ndarray], weight_power: float, rs: np.random.RandomState) -> int:
    """Index of a mask drawn with probability ∝ (sum of its values)^weight_power."""
    w = np.array([np.sum(m) for m in masks]) ** weight_power
    return int(rs.choice(np.arange(len(masks)), p=w / np.sum(w)))


def draw_centre(x: float, y: float, cfg, rs: np.random.RandomState) -> np.ndarray:
    """A new normalised centre: ``candidates`` uniform points inside the margin, chosen ∝ distance² (0 when nearer
    than ``min_distance``)."""
    b = cfg["boundary"]
    points = rs.rand(cfg["candidates"], 2) * (1 - 2 * b) + b
    d = np.sqrt((points[:, 0] - x) ** 2 + (points[:, 1] - y) ** 2)
    d[d < cfg["min_distance"]] = 0
    w = d ** 2
    return points[rs.choice(cfg["candidates"], p=w / np.sum(w))]


def placement(mask: np.ndarray, cfg, rs: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """A random rotation about the mask's box centre, then a move to a drawn centre: (2x3 affine, moved 0/255 mask)."""
    h, w = mask.shape
    bx, by, bw, bh = cv2.boundingRect(mask)
    sx, sy = bx + bw // 2, by + bh // 2
    tx, ty = draw_centre(sx / w, sy / h, cfg, rs) * np.array([w, h])
    rot = np.vstack([cv2.getRotationMatrix2D([sx, sy], rs.randint(0, 360), 1.0), [0, 0, 1]])
    move = np.array([[1, 0, tx - sx], [0, 1, ty - sy], [0, 0, 1]])
    affine = (move @ rot)[:2]
    moved = cv2.warpAffine(mask, affine, (w, h))
    return affine, np.where(moved > cfg["warp_threshold"], 255, 0).astype(mask.dtype)


def paste(image, label_map, mask, affine, moved, out_image, out_labels) -> None:
    """Warp the component's pixels and labels with ``affine`` and write them where the moved mask is."""
    h, w = mask.shape
    inside = mask > 0
    pixels = np.zeros_like(image)
    pixels[inside] = image[inside]
    labels = np.zeros_like(label_map)
    labels[inside] = label_map[inside]
    pixels, labels = cv2.warpAffine(pixels, affine, (w, h)), cv2.warpAffine(labels, affine, (w, h))
    where = moved > 0
    out_labels[where] = labels[where]
    out_image[where] = pixels[where]


def augment(image: np.ndarray, segments: np.ndarray, label_map: np.ndarray, background: np.ndarray, cfg,
            rs: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """One LSA of a labelled image onto itself: (augmented RGB image, augmented label map)."""
    pool = [m for m in instance_masks(segments, cfg["mask_min_area"])
            if overlap_ratio(m, label_map) > cfg["label_overlap"]]
    out_image, out_labels = image.copy(), label_map.copy()

    def draw():
        if not pool:
            return None  # the code would fail here (nothing left to draw)
        return pool.pop(draw_mask(pool, cfg["weight_power"], rs))

    def mostly_labelled(mask) -> bool:
        return int((label_map[mask > 0] == 0).sum()) <= cfg["max_unlabelled"]

    done = 0
    while done < cfg["min_aug"]:  # the first pastes: always made, with the last placement if none qualified
        mask = draw()
        if mask is None:
            return out_image, out_labels
        if not mostly_labelled(mask):
            continue
        for _ in range(cfg["attempts"]):
            affine, moved = placement(mask, cfg, rs)
            if overlap_ratio(moved, background) < cfg["first_overlap"]:
                break
        paste(image, label_map, mask, affine, moved, out_image, out_labels)
        done += 1
    for _ in range(cfg["max_aug"] - cfg["min_aug"]):  # extra pastes: only where a placement qualified
        mask = draw()
        if mask is None:
            break
        if not mostly_labelled(mask):
            continue
        for attempt in range(cfg["attempts"] + 1):
            affine, moved = placement(mask, cfg, rs)
            if overlap_ratio(moved, background) < cfg["extra_overlap"]:
                if attempt < cfg["attempts"]:  # the code's bound: a fit on the very last draw is not pasted
                    paste(image, label_map, mask, affine, moved, out_image, out_labels)
                break
    return out_image, out_labels
