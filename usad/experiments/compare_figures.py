"""Figs. 7-8 of the paper: input | ground truth | each method's map, for low- and high-contrast test images.

Which images (the paper picked its own by eye; this is the documented rule): among the anomalous test images,
the *contrast* of an image is the distance between the mean RGB colour (0..255) of its ground-truth pixels and
that of the rest of the image, both at the evaluation size. Fig. 7 shows the ``compare.figure_images``
anomalous images of lowest contrast (objects stained, buried or coal-coloured), Fig. 8 those of highest
contrast; ties are broken by evaluation order.

Colour scale: one per method, fixed over its whole test set, ``[min(0, min), max]`` of that method's maps
at the evaluation size (as the Fig. 9 panels of ``usad.core.panels``), printed under each map, so a colour
means the same value in every row of a method's column and normal-looking regions stay dark. Each tile is
``compare.figure_tile`` pixels square (the maps are coloured at the evaluation size, then the tile resized).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from usad.core.outputs import colorize, resized_rgb, write_png
from usad.core.panels import tile

FIGURES = (("fig7_low_contrast.png", "low"), ("fig8_high_contrast.png", "high"))


def contrast(image_rgb: np.ndarray, mask: np.ndarray) -> float:
    """Distance between the mean colour inside the mask and outside it (RGB, 0..255)."""
    inside = mask.astype(bool)
    if not inside.any() or inside.all():
        return float("nan")
    pixels = image_rgb.reshape(-1, 3).astype(np.float64)
    flat = inside.reshape(-1)
    return float(np.linalg.norm(pixels[flat].mean(0) - pixels[~flat].mean(0)))


def pick_cases(contrasts: dict[int, float], k: int) -> dict[str, list[int]]:
    """The ``k`` lowest- and ``k`` highest-contrast images (indices into the test set), in that order."""
    ranked = sorted((c, i) for i, c in contrasts.items() if np.isfinite(c))
    low = [i for _, i in ranked[:k]]
    high = [i for _, i in ranked[::-1][:k]]
    return {"low": low, "high": high}


def test_contrasts(root: Path, files: list[str], label: np.ndarray, masks: np.ndarray) -> dict[int, float]:
    """The contrast of every anomalous test image (``files`` relative to ``root``)."""
    size = masks.shape[-1]
    return {int(i): contrast(resized_rgb(Path(root) / files[i], size), masks[i]) for i in np.flatnonzero(label == 1)}


def colour_range(maps: np.ndarray) -> tuple[float, float]:
    lo, hi = min(0.0, float(maps.min())), float(maps.max())
    return lo, max(hi, lo + 1e-12)


def square(rgb: np.ndarray, px: int) -> np.ndarray:
    if rgb.shape[:2] == (px, px):
        return rgb
    return cv2.resize(rgb, (px, px), interpolation=cv2.INTER_AREA if rgb.shape[0] > px else cv2.INTER_LINEAR)


def figure_rows(root: Path, files: list[str], masks: np.ndarray, picks: list[int], method_maps: dict[str, tuple],
                px: int) -> np.ndarray:
    """One row per picked image: input | ground truth | each method's map on its range."""
    size = masks.shape[-1]
    rows = []
    for i in picks:
        gt = np.repeat((masks[i][..., None] > 0).astype(np.uint8) * 255, 3, axis=2)
        tiles = [tile(square(resized_rgb(Path(root) / files[i], size), px), Path(files[i]).parent.name + "/" +
                      Path(files[i]).name), tile(square(gt, px), "ground truth")]
        for title, (maps, (lo, hi)) in method_maps.items():
            tiles.append(tile(square(colorize(maps[i], lo, hi), px), title, f"{lo:.3g} - {hi:.3g}"))
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def write_figures(out: Path, root: Path, files: list[str], label: np.ndarray, masks: np.ndarray,
                  predictions: dict[str, Path], k: int, px: int) -> dict:
    """fig7_low_contrast.png and fig8_high_contrast.png in ``out`` from each method's predictions.npz
    (``predictions``: column title -> file); returns what was drawn (files, picked images, contrasts)."""
    contrasts = test_contrasts(root, files, label, masks)
    picks = pick_cases(contrasts, k)
    wanted = sorted({i for v in picks.values() for i in v})
    method_maps = {}
    for title, path in predictions.items():
        with np.load(path) as z:
            maps = z["map"]
            method_maps[title] = ({i: maps[i] for i in wanted}, colour_range(maps))
            del maps
    written = []
    for name, case in FIGURES:
        if not picks[case] or not method_maps:
            continue
        path = Path(out) / name
        write_png(path, figure_rows(root, files, masks, picks[case], method_maps, px))
        written.append(path)
    return {"files": [str(p) for p in written],
            "rule": "anomalous test images of lowest (Fig. 7) and highest (Fig. 8) contrast: distance between the "
                    "mean RGB colour inside and outside the ground truth, at the evaluation size",
            "images": {case: [{"file": files[i], "contrast": contrasts[i]} for i in picks[case]] for case in picks},
            "colour_ranges": {t: list(r) for t, (_, r) in method_maps.items()}}
