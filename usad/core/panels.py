"""Per-image panels like the paper's Fig. 9: input | ground truth | M_obj | M_attr | M_pc | fused.

Colour scale. The four maps are different quantities on different ranges
(M_obj and M_pc lie in [0, 1], M_attr is an unnormalised distance, and the
fused map is their product, small except where all three agree), so one
literal lo/hi for all four would leave some of them blank. Instead each map
*type* gets one fixed range over the whole test set, ``[min(0, min), max]`` of
that type over all test images, and every map of a row is drawn on it with
the JET colour map. A colour therefore means the same value for a map type in
every panel (a normal image looks dark instead of being stretched to full
contrast), and the range is printed under each map. The input and ground truth
are shown at the evaluation size (bicubic), like the maps.

``usad.predict`` draws the same row without ground truth (``maps_panel``) for
images that have no test set around them: there each map gets its own range
over that one image, again printed under it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from usad.core.outputs import colorize, resized_rgb, write_png

PANEL_MAPS = (("m_obj", "M_obj"), ("m_attr", "M_attr"), ("m_pc", "M_pc"), ("m_fused", "fused"))
BAR_HEIGHT = 24          # white strip above (title) and below (colour range) each tile
FONT = cv2.FONT_HERSHEY_SIMPLEX


def map_ranges(maps: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """The colour range ``(lo, hi)`` of each map type over the whole test set."""
    missing = [k for k, _ in PANEL_MAPS if k not in maps]
    if missing:
        raise ValueError(f"panels need the branch maps {missing}: evaluate with keep_branch_maps=True")
    ranges = {}
    for key, _ in PANEL_MAPS:
        lo, hi = min(0.0, float(maps[key].min())), float(maps[key].max())
        ranges[key] = (lo, max(hi, lo + 1e-12))
    return ranges


def _text_bar(width: int, text: str) -> np.ndarray:
    """A white strip with ``text`` in black, shrunk to fit the width."""
    bar = np.full((BAR_HEIGHT, width, 3), 255, np.uint8)
    scale = 0.5
    text_width = cv2.getTextSize(text, FONT, scale, 1)[0][0]
    if text_width > width - 8:
        scale *= (width - 8) / text_width
    cv2.putText(bar, text, (4, BAR_HEIGHT - 8), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def tile(image_rgb: np.ndarray, title: str, caption: str = "") -> np.ndarray:
    """An image with its title above and a caption (e.g. the colour range) below."""
    width = image_rgb.shape[1]
    return np.vstack([_text_bar(width, title), image_rgb, _text_bar(width, caption)])


def map_tiles(maps: dict[str, np.ndarray], ranges: dict[str, tuple[float, float]]) -> list[np.ndarray]:
    """The four maps of one image, JET-coloured on their ranges, each with its title and range."""
    return [tile(colorize(maps[key], *ranges[key]), title, f"{ranges[key][0]:.3g} - {ranges[key][1]:.3g}")
            for key, title in PANEL_MAPS]


def panel(image_rgb: np.ndarray, mask: np.ndarray, maps: dict[str, np.ndarray],
          ranges: dict[str, tuple[float, float]]) -> np.ndarray:
    """One row: the input, its ground truth (white = anomalous), and the four maps on their ranges."""
    gt = np.repeat((mask[..., None] > 0).astype(np.uint8) * 255, 3, axis=2)
    return np.hstack([tile(image_rgb, "input"), tile(gt, "ground truth"), *map_tiles(maps, ranges)])


def maps_panel(image_rgb: np.ndarray, maps: dict[str, np.ndarray]) -> np.ndarray:
    """One image without ground truth (``usad.predict``): input | M_obj | M_attr | M_pc | fused, each map
    on its own range ``[min(0, min), max]`` over this image, printed under it (compare ranges across images)."""
    return np.hstack([tile(image_rgb, "input"), *map_tiles(maps, map_ranges(maps))])


def panel_name(rel: Path) -> str:
    return f"{rel.parent.name}_{rel.stem}_panel.png"


def save_panels(out_dir, category_dir, preds, indices) -> list[Path]:
    """Write ``<kind>_<name>_panel.png`` for the test images ``indices`` of ``preds``; returns the paths.

    ``preds`` is a ``usad.models.usad.branches.Predictions`` (files relative to ``category_dir``,
    maps and masks at the evaluation size). Each panel is 6 tiles of the evaluation
    size wide and the evaluation size + 2 text strips high.
    """
    ranges = map_ranges(preds.maps)
    size = preds.maps["m_fused"].shape[-1]
    written = []
    for i in indices:
        rel = Path(preds.files[i])
        row = panel(resized_rgb(Path(category_dir) / rel, size), preds.mask[i],
                    {k: preds.maps[k][i] for k, _ in PANEL_MAPS}, ranges)
        path = Path(out_dir) / panel_name(rel)
        write_png(path, row)
        written.append(path)
    return written
