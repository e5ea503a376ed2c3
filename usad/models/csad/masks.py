"""CSAD's pseudo-label rules that several steps share (Sec. 3.1): the per-category settings, the errors, and the
official code's mask operations (split, drop, merge and filter instance masks; the coarse and fine refinements).
``grounding.py`` (Grounded-SAM), ``pseudo_labels.py`` and ``segmentor.py`` import them from here."""

from __future__ import annotations

import cv2
import numpy as np

from usad.core.errors import UsadError
from usad.models.csad.lsa import instance_masks, overlap_ratio


class PseudoLabelError(UsadError, ValueError):
    """Pseudo-labels that cannot be made: a mask folder not matching the images, too few images, no clusters."""


class MissingPromptError(UsadError, KeyError):
    """A category without GroundingDINO prompts while the foundation models are needed."""

    def __str__(self):
        return str(self.args[0])


def category_settings(section, category: str) -> dict:
    """``section.pseudo`` overridden by ``section.category_kwargs[category]`` (prompts, bandwidth, ...)."""
    settings = dict(section["pseudo"])
    settings.setdefault("text_prompt", None)
    settings["lsa_min_distance"] = section["lsa"]["min_distance"]
    table = section.get("category_kwargs", {})
    settings.update(dict(table.get(category, {}) or {}))
    return settings


def binary255(mask) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


def split_connected(masks, min_pixels: int, max_bbox: float) -> list[np.ndarray]:
    """Every 4-connected component (the zero component included, as the code) with more than ``min_pixels``
    pixels and a bounding box under ``max_bbox`` of the image."""
    out = []
    for mask in masks:
        mask = binary255(mask != 0) if mask.dtype != np.uint8 else mask
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        limit = mask.shape[0] * mask.shape[1] * max_bbox
        for j in range(n):
            if stats[j, 2] * stats[j, 3] < limit and stats[j, 4] > min_pixels:
                out.append(binary255(labels == j))
    return out


def drop_small(masks, min_area: float) -> list[np.ndarray]:
    return [m for m in masks if np.count_nonzero(m) / m.size > min_area]


def merge(masks, min_area: float, shape) -> np.ndarray:
    """One instance-id image: masks above ``min_area``, painted largest first (ids 1.. by decreasing size)."""
    out = np.zeros(shape, np.uint8)
    for i, m in enumerate(sorted(drop_small(masks, min_area), key=np.sum, reverse=True)):
        out[m != 0] = i + 1
    return out


def combine_filter(masks, min_area: float, overlap: float) -> list[np.ndarray]:
    """Smallest first: keep a mask unless ``overlap`` of it is already covered; covered ones get a second chance
    against the final union (the code's ``filter_by_combine``)."""
    masks = sorted(drop_small(masks, min_area), key=np.sum)
    if not masks:
        return []
    union = np.zeros_like(masks[0], dtype=bool)
    kept, waiting = [], []
    for i, m in enumerate(masks):
        if i == 0 or overlap_ratio(union, m) < overlap:
            union = np.logical_or(union, m)
            kept.append(m)
        else:
            waiting.append(m)
    for m in waiting:
        if np.count_nonzero(np.logical_and(union, m)) / np.count_nonzero(m) < overlap:
            union = np.logical_or(union, m)
            kept.append(m)
    return kept


def refined_coarse(grounding: np.ndarray, s: dict) -> np.ndarray:
    """Coarse mode (code: no_sam): the grounding mask's instances, split into connected parts, combine-filtered."""
    parts = split_connected(instance_masks(grounding, s["mask_min_area"]), s["cc_min_pixels"], s["cc_max_bbox"])
    return merge(combine_filter(parts, s["mask_min_area"], s["combine_overlap"]), s["mask_min_area"], grounding.shape)


def refined_fine(auto_masks, grounding, grounding_background, sam_background, s: dict) -> np.ndarray:
    """Fine mode: SAM's automatic masks split into connected parts, kept inside the grounding mask (where
    ``grounding_filter``), outside both backgrounds, the ``max_masks`` largest, combine-filtered."""
    parts = split_connected(auto_masks, s["cc_min_pixels"], s["cc_max_bbox"])
    if s["grounding_filter"]:
        inside = binary255(grounding != 0)
        parts = [m for m in parts if overlap_ratio(inside, m) > s["grounding_overlap"]]
    for bg in (sam_background, grounding_background):
        parts = [m for m in parts if overlap_ratio(m, bg) < s["background_overlap"]]
    parts = sorted(parts, key=np.sum, reverse=True)[: s["max_masks"]]
    return merge(combine_filter(parts, s["mask_min_area"], s["combine_overlap"]), s["mask_min_area"],
                 grounding.shape)
