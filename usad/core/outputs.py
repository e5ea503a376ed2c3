"""Outputs on disk that every layer writes: JSON, NPZ and PNG files (atomically), and heatmap colouring."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from usad.core.artifacts import atomic_write
from usad.core.data.dataset import load_rgb


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as an uncompressed NPZ, written atomically (``np.savez`` to an open file keeps the exact name)."""
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(Path(path), write)


def colorize(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A map as a JET-coloured RGB uint8 image on the scale [lo, hi]."""
    scaled = np.clip((m - lo) / max(hi - lo, 1e-12), 0, 1)
    return cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image_rgb: np.ndarray, m: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The map (min-max scaled) over the image."""
    heat = colorize(m, float(m.min()), float(m.max()))
    return (alpha * heat + (1 - alpha) * image_rgb).astype(np.uint8)


def resized_rgb(path: Path, size: int) -> np.ndarray:
    return np.asarray(load_rgb(path).resize((size, size), resample=Image.BICUBIC))  # like the test transform


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An RGB uint8 image (or a one-channel H x W one) as PNG, written atomically."""
    ok, data = cv2.imencode(".png", rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data.tobytes()))
