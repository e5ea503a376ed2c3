"""Per-image panels like the paper's Fig. 9: input | ground truth | M_obj | M_attr | M_pc | fused.

Colour scale: the branch maps live on very different ranges (M_obj and M_pc
in [0, 1], M_attr unnormalised, the fused product orders of magnitude smaller),
so each map type is first divided by its maximum over the whole test set;
then every map of a row is drawn on the same scale [0, 1]. A bright region
therefore means "high for this map type", comparable across the row and
across images. The factor used for each map type is printed in its title.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .report import colorize, resized_rgb, write_png

PANEL_MAPS = (("m_obj", "M_obj"), ("m_attr", "M_attr"), ("m_pc", "M_pc"), ("m_fused", "fused"))
TITLE_HEIGHT = 28


def _titled(tile: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((TITLE_HEIGHT, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, tile])


def map_scales(maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Maximum of each map type over the test set (the per-type normalisation of the panels)."""
    return {k: max(float(maps[k].max()), 1e-12) for k, _ in PANEL_MAPS}


def panel(image_rgb: np.ndarray, mask: np.ndarray, maps: dict[str, np.ndarray], scales: dict[str, float]) -> np.ndarray:
    """One row: the input, its ground truth, and the four maps on the shared scale."""
    tiles = [_titled(image_rgb, "input"), _titled(np.repeat((mask[..., None] > 0) * np.uint8(255), 3, axis=2), "ground truth")]
    for key, title in PANEL_MAPS:
        tiles.append(_titled(colorize(maps[key] / scales[key], 0.0, 1.0), f"{title} /{scales[key]:.3g}"))
    return np.hstack(tiles)


def save_panels(out_dir, category_dir, preds, indices) -> list[Path]:
    """Write ``<kind>_<name>_panel.png`` for the given test images; returns the paths."""
    scales = map_scales(preds.maps)
    size = preds.maps["m_fused"].shape[-1]
    written = []
    for i in indices:
        rel = Path(preds.files[i])
        row = panel(resized_rgb(Path(category_dir) / rel, size), preds.mask[i],
                    {k: preds.maps[k][i] for k, _ in PANEL_MAPS}, scales)
        path = Path(out_dir) / f"{rel.parent.name}_{rel.stem}_panel.png"
        write_png(path, row)
        written.append(path)
    return written
