"""The trained detector as a small Python API, for images of any size.

    from usad import Detector, load_config
    detector = Detector.from_config(load_config("configs/coalad.yaml"))
    for r in detector.predict(["belt_0001.png", pil_image, uint8_array]):
        print(r.source, r.score, r.anomaly_map().shape)

Each image goes through the same test transform as evaluation: converted to
RGB, resized to a square ``data.eval_size`` (bicubic; non-square images are
stretched, since the branches need square patch grids), normalised. Maps come
back at the evaluation size; ``anomaly_map()`` resizes the fused map back to
the image's own size (bilinear) for overlays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from .backbones import resolve_device
from .data.dataset import DatasetError, load_rgb, test_transform
from .pipeline import check_finite, load_branches, predict_batch


@dataclass
class DetectionResult:
    source: str
    original_size: tuple[int, int]        # (width, height) of the input image
    score: float                          # fused image score (Eq. 22)
    s_obj: float
    s_attr: float
    s_pc: float
    maps: dict[str, np.ndarray] = field(repr=False)  # m_fused, m_obj, m_attr, m_pc at the evaluation size

    def anomaly_map(self, original_size: bool = True) -> np.ndarray:
        """The fused map, at the image's own size (default) or at the evaluation size."""
        m = self.maps["m_fused"]
        if not original_size:
            return m
        return cv2.resize(m, self.original_size, interpolation=cv2.INTER_LINEAR)


def to_rgb(image) -> tuple[Image.Image, str]:
    """A path, PIL image or HxW(x3/4) uint8 array as an RGB PIL image, with a name for it."""
    if isinstance(image, (str, Path)):
        return load_rgb(Path(image)), str(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB"), "<PIL image>"
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DatasetError(f"array images must be HxW or HxWx3 uint8, got {image.dtype} {image.shape}")
        return Image.fromarray(image).convert("RGB"), "<array>"
    raise DatasetError(f"cannot use a {type(image).__name__} as an image: give a path, a PIL image or a uint8 array")


class Detector:
    def __init__(self, cfg, branches: dict | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.branches = branches or load_branches(cfg, self.device)
        self.transform = test_transform(cfg.data.eval_size)

    @classmethod
    def from_config(cls, cfg) -> "Detector":
        """Load the three trained branches named by ``cfg`` (paths.models / data.category)."""
        return cls(cfg)

    @torch.no_grad()
    def predict(self, images: list) -> list[DetectionResult]:
        """Detect anomalies in a list of images (batched by ``data.batch_size``)."""
        loaded = [to_rgb(im) for im in images]
        results = []
        bs = self.cfg.data.batch_size
        for start in range(0, len(loaded), bs):
            chunk = loaded[start:start + bs]
            x = torch.stack([self.transform(im) for im, _ in chunk]).to(self.device)
            out = predict_batch(self.branches, x, self.cfg)
            check_finite(out, [name for _, name in chunk])
            for j, (im, name) in enumerate(chunk):
                results.append(DetectionResult(
                    source=name, original_size=im.size,
                    score=float(out["s_fused"][j]), s_obj=float(out["s_obj"][j]),
                    s_attr=float(out["s_attr"][j]), s_pc=float(out["s_pc"][j]),
                    maps={k: out[k][j].float().cpu().numpy() for k in ("m_fused", "m_obj", "m_attr", "m_pc")},
                ))
        return results
