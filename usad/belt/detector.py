"""The trained detector as a small Python API, for images of any size and aspect ratio.

    from usad import Detector, load_config
    detector = Detector.from_config(load_config("configs/coalad.yaml"))
    for r in detector.predict(["belt_0001.png", pil_image, uint8_array]):
        print(r.source, r.score, r.anomaly_map().shape)

Each image goes through exactly the evaluation's test transform: converted to
RGB, resized to a square ``data.eval_size x data.eval_size`` (PIL bicubic),
ImageNet-normalised. A non-square image is therefore *stretched* to a square:
the branches resize that square to their own square inputs (their patch grids
are square), as they do for the test set. Scores and maps are computed at the
evaluation size; ``anomaly_map()`` resizes the fused map back to the image's
own width x height (bilinear) so it lines up with the original for overlays.

With an operating point (``python -m usad.calibrate``; see usad.belt.decisions)
each result also has a ``verdict`` ("anomalous" / "normal"), a binary
``mask`` (the fused map at the image's own size above the pixel threshold) and
``boxes`` (its connected regions, in the image's own pixels):

    detector = Detector.from_config(cfg)            # uses <paths.models>/<category>/operating_point.json if present
    (r,) = detector.predict(["belt_0001.png"])
    print(r.verdict, r.boxes)                       # [{"x0", "y0", "x1", "y1", "area", "peak"}, ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from PIL import Image

from usad.core.backbones import resolve_device
from usad.core.data.dataset import DatasetError, load_rgb, test_transform
from usad.belt.decisions import Thresholds, load_operating_point, regions, verdict
from usad.models.usad.branches import load_branches
from usad.models.usad.inference import check_finite, predict_batch

MAP_KEYS = ("m_fused", "m_obj", "m_attr", "m_pc")


@dataclass
class DetectionResult:
    source: str                           # the path, or a description of an in-memory image
    original_size: tuple[int, int]        # (width, height) of the input image
    score: float                          # fused image score s (Eq. 22-23)
    s_obj: float                          # MACLU object score
    s_attr: float                         # MA2Patch attribute score
    s_pc: float                           # PatchCore score
    maps: dict[str, np.ndarray] = field(repr=False)  # m_fused, m_obj, m_attr, m_pc, float32, eval size x eval size
    verdict: str | None = None            # "anomalous" / "normal", with an image threshold
    mask: np.ndarray | None = field(default=None, repr=False)  # bool, height x width: fused map > pixel threshold
    boxes: list[dict] | None = None       # the mask's regions {x0, y0, x1, y1, area, peak}, ends exclusive

    def anomaly_map(self, original_size: bool = True) -> np.ndarray:
        """The fused map M: at the image's own size, height x width (default), or at the evaluation size."""
        m = self.maps["m_fused"]
        if not original_size:
            return m
        return cv2.resize(m, self.original_size, interpolation=cv2.INTER_LINEAR)  # cv2 takes (width, height)


def to_rgb(image) -> tuple[Image.Image, str]:
    """A path, PIL image or HxW / HxWx1 / HxWx3 / HxWx4 uint8 array as an RGB PIL image, with a name for it."""
    if isinstance(image, (str, Path)):
        return load_rgb(Path(image)), str(image)
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or f"<PIL image {image.size[0]}x{image.size[1]}>"
        try:
            return image.convert("RGB"), name
        except Exception as e:  # e.g. a lazily opened file that turns out truncated
            raise DatasetError(f"cannot read image {name}: {type(e).__name__}: {e}") from None
    if isinstance(image, np.ndarray):
        ok = image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)))
        if not ok or 0 in image.shape:
            raise DatasetError(f"array images must be HxW or HxWx3 (RGB) uint8, got {image.dtype} of shape {image.shape}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        h, w = image.shape[:2]
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB"), f"<array {w}x{h}>"
    raise DatasetError(f"cannot use a {type(image).__name__} as an image: give a path, a PIL image or a uint8 array")


class Detector:
    """The three trained branches and their fusion, applied to arbitrary images."""

    def __init__(self, cfg, branches: dict | None = None, thresholds: Thresholds = Thresholds()):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.branches = branches or load_branches(cfg, self.device)
        self.transform = test_transform(cfg.data.eval_size)
        self.thresholds = thresholds
        self.operating_point = None

    @classmethod
    def from_config(cls, cfg, operating_point: str | Path | None = None, threshold: float | None = None,
                    min_area: int = 0) -> "Detector":
        """Load the branches trained under ``cfg`` (``<paths.models>/<data.category>/*.pt``) on ``cfg.device``,
        and the operating point ``operating_point`` (a file that must exist), or by default
        ``<paths.models>/<data.category>/operating_point.json`` when it exists; it is refused when made with
        other model files. ``threshold`` overrides its image threshold (and gives verdicts without one);
        ``min_area`` drops mask regions of fewer pixels (at the image's own size)."""
        detector = cls(cfg)  # the model files first: a missing or mismatched one is named before the operating point
        op = detector.operating_point = load_operating_point(cfg, operating_point)
        if op is not None and threshold is None:
            threshold = op.image_threshold
        detector.thresholds = Thresholds(threshold, op.pixel_threshold if op else None, min_area)
        return detector

    def decide(self, r: DetectionResult) -> DetectionResult:
        """Verdict, mask and boxes of one result at this detector's thresholds (those it has)."""
        t = self.thresholds
        r.verdict = verdict(r.score, t.image)
        if t.pixel is not None:
            r.mask, r.boxes = regions(r.anomaly_map(), t.pixel, t.min_area)
        return r

    @torch.no_grad()
    def predict_rgb(self, images: list[Image.Image], names: list[str]) -> list[DetectionResult]:
        """One batch of RGB PIL images through the test transform, the branches and fusion."""
        x = torch.stack([self.transform(im) for im in images]).to(self.device)
        out = predict_batch(self.branches, x, self.cfg)
        check_finite(out, names)
        maps = {k: out[k].float().cpu().numpy() for k in MAP_KEYS}
        scores = {k: out[k].double().cpu().numpy() for k in ("s_fused", "s_obj", "s_attr", "s_pc")}
        return [self.decide(DetectionResult(
                    source=name, original_size=im.size, score=float(scores["s_fused"][j]), s_obj=float(scores["s_obj"][j]),
                    s_attr=float(scores["s_attr"][j]), s_pc=float(scores["s_pc"][j]), maps={k: maps[k][j] for k in MAP_KEYS}))
                for j, (im, name) in enumerate(zip(images, names))]

    def predict_files(self, files: list[Path], skipped: Callable[[int, DatasetError], None]
                      ) -> Iterator[tuple[int, Image.Image, DetectionResult]]:
        """``(index, image, result)`` for the image files, read and detected one batch of ``data.batch_size``
        at a time; an unreadable file is passed to ``skipped(index, error)`` and left out."""
        bs = self.cfg.data.batch_size
        for start in range(0, len(files), bs):
            batch = []
            for i in range(start, min(start + bs, len(files))):
                try:
                    batch.append((i, load_rgb(files[i])))
                except DatasetError as e:
                    skipped(i, e)
            if batch:
                results = self.predict_rgb([image for _, image in batch], [str(files[i]) for i, _ in batch])
                yield from ((i, image, r) for (i, image), r in zip(batch, results))

    def predict(self, images) -> list[DetectionResult]:
        """Detect anomalies in a list of images (paths, PIL images, uint8 arrays), one result per image.

        A single image is accepted too (the list then has one result). Images are
        read one batch of ``data.batch_size`` at a time; an unreadable one raises
        ``DatasetError`` naming it (``usad.predict`` skips such files instead).
        """
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        results = []
        bs = self.cfg.data.batch_size
        for start in range(0, len(images), bs):
            loaded = [to_rgb(im) for im in images[start:start + bs]]
            results += self.predict_rgb([im for im, _ in loaded], [name for _, name in loaded])
        return results
