"""Grounded-SAM for CSAD's pseudo-labels: GroundingDINO boxes from text prompts, SAM-HQ masks in the boxes.

Packages (``requirements-csad.txt``) and checkpoints (local files only; nothing downloads during a run):
- SAM-HQ: ``segment-anything-hq`` (SysCV's own package: the same ``sam_model_registry``,
  ``SamPredictor`` and ``SamAutomaticMaskGenerator`` that the official code vendors), loading the
  original ``sam_hq_vit_h.pth`` (config key ``sam_weights``);
- GroundingDINO: the ``transformers`` port (``GroundingDinoForObjectDetection``), loading a local
  folder (``groundingdino_weights``) holding ``IDEA-Research/grounding-dino-tiny``: the Swin-T OGC
  checkpoint ``groundingdino_swint_ogc.pth`` converted by transformers, with its BERT tokenizer.
  ``groundingdino-py`` was not taken: it would install a second OpenCV (``opencv-python`` beside
  ``opencv-python-headless``) and an old ``supervision``, and its BERT wrapper targets transformers 4.

What is computed per image, as the code does (``pseudo_label.grounding_segmentation`` / ``segmentation``):
1. the caption (lower-cased, stripped, ending in "."), the image resized with its shorter side to 800
   (longer side at most 1333) and ImageNet-normalised; boxes whose best token score passes
   ``box_threshold``; each box's phrase = the caption tokens scoring above ``text_threshold``;
2. boxes whose phrase contains a word of ``background_prompt`` make the grounding background; SAM-HQ
   masks (one per box, ``multimask_output=False``) of the others, merged largest first, make the
   grounding mask (optionally ``filter_by_combine`` first);
3. SAM-HQ's background: the mask prompted by eight points at the image corners;
4. fine mode only: SAM-HQ's automatic masks (``sam_kwargs``), refined by ``pseudo_labels.refined_fine``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from usad.core.backbones import BackboneWeightsError
from usad.core.errors import UsadError

log = logging.getLogger(__name__)

DINO_SHORT_SIDE = 800
DINO_MAX_SIDE = 1333
CORNER_INSET = 10   # the code's background prompt: 4 points 10 px inside the corners and the 4 corners


class MissingPackageError(UsadError, ImportError):
    """An optional package of requirements-csad.txt is not installed."""


def _name(section) -> str:
    return section.get("name", "csad")


def check_checkpoints(section) -> None:
    """The two foundation-model checkpoints exist (one error naming the key), and their packages import."""
    name = _name(section)
    sam, dino = section["sam_weights"], section["groundingdino_weights"]
    for key, path, what in (("sam_weights", sam, "the SAM-HQ ViT-H checkpoint sam_hq_vit_h.pth"),
                            ("groundingdino_weights", dino, ("a local folder with the transformers GroundingDINO port "
                                                             "(IDEA-Research/grounding-dino-tiny)"))):
        if path is None or not Path(path).expanduser().exists():
            raise BackboneWeightsError(
                f"{name}.{key} = {path!r}: {what} is needed to make pseudo-labels; pass --set {name}.{key}=PATH, or "
                f"skip the foundation models with precomputed masks: --set {name}.pseudo_labels=DIR")
    for module in ("segment_anything_hq", "transformers"):
        try:
            __import__(module)
        except ImportError:
            raise MissingPackageError(f"package {module!r} is missing: pip install -r requirements-csad.txt") from None


def dino_size(w: int, h: int, size: int = DINO_SHORT_SIDE, max_size: int = DINO_MAX_SIDE) -> tuple[int, int]:
    """(height, width) of GroundingDINO's input: shorter side ``size`` unless the longer would pass ``max_size``."""
    lo, hi = float(min(w, h)), float(max(w, h))
    if hi / lo * size > max_size:
        size = round(max_size * lo / hi)
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    return (int(size * h / w), int(size)) if w < h else (int(size), int(size * w / h))


def caption_of(prompt: str) -> str:
    caption = prompt.lower().strip()
    return caption if caption.endswith(".") else caption + "."


class GroundedSAM:
    """The two foundation models, loaded once from local files."""

    def __init__(self, section, device):
        check_checkpoints(section)
        from segment_anything_hq import (
            SamAutomaticMaskGenerator,
            SamPredictor,
            sam_model_registry,
        )
        from transformers import AutoTokenizer, GroundingDinoForObjectDetection

        self.device = torch.device(device)
        folder = str(Path(section["groundingdino_weights"]).expanduser())
        try:
            self.dino = GroundingDinoForObjectDetection.from_pretrained(folder, local_files_only=True).to(self.device)
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise BackboneWeightsError(f"{_name(section)}.groundingdino_weights = {folder!r} is not a transformers "
                                       f"GroundingDINO folder (config.json, model weights, tokenizer): {e}") from None
        self.dino.eval()
        try:
            sam = sam_model_registry["vit_h"](checkpoint=str(Path(section["sam_weights"]).expanduser()))
        except Exception as e:
            raise BackboneWeightsError(f"{_name(section)}.sam_weights: not a SAM-HQ ViT-H checkpoint: {e}") from None
        self.predictor = SamPredictor(sam.to(self.device))
        self.generator = SamAutomaticMaskGenerator(sam, **dict(section["sam_kwargs"]))

    @torch.no_grad()
    def detect(self, image: np.ndarray, prompt: str, box_threshold: float, text_threshold: float):
        """Boxes (xyxy pixels, float32 (n, 4)) and their phrases."""
        from usad.models.csad.segmentor import normalize

        h, w = image.shape[:2]
        oh, ow = dino_size(w, h)
        x = normalize(np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))[None], self.device)
        caption = caption_of(prompt)
        tokens = self.tokenizer(caption, return_tensors="pt").to(self.device)
        out = self.dino(pixel_values=x, pixel_mask=torch.ones(1, oh, ow, dtype=torch.long, device=self.device),
                        **tokens)
        logits = out.logits.sigmoid()[0].cpu()            # (queries, tokens)
        boxes = out.pred_boxes[0].cpu()                    # cx, cy, w, h in [0, 1]
        keep = logits.max(1).values > box_threshold
        logits, boxes = logits[keep], boxes[keep]
        ids = tokens["input_ids"][0].cpu().tolist()
        phrases = [self.tokenizer.decode([ids[i] for i in (row > text_threshold).nonzero()[:, 0].tolist()
                                          if i < len(ids)]) for row in logits]
        xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
        return (xyxy * torch.tensor([w, h, w, h])).numpy().astype(np.float32), phrases

    @torch.no_grad()
    def box_masks(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """One SAM-HQ mask per box: bool (n, H, W)."""
        self.predictor.set_image(image)
        if len(boxes) == 0:
            return np.zeros((0, *image.shape[:2]), bool)
        b = self.predictor.transform.apply_boxes_torch(torch.from_numpy(boxes), image.shape[:2]).to(self.device)
        masks, _, _ = self.predictor.predict_torch(point_coords=None, point_labels=None, boxes=b,
                                                   multimask_output=False)
        return masks[:, 0].cpu().numpy()

    def background(self, image: np.ndarray) -> np.ndarray:
        """SAM-HQ's mask for eight positive points at the corners (0/255 uint8)."""
        h, w = image.shape[:2]
        k = CORNER_INSET
        pts = np.array([[k, k], [k, h - k], [w - k, k], [w - k, h - k], [0, 0], [0, h], [w, 0], [w, h]])
        self.predictor.set_image(image)
        mask, _, _ = self.predictor.predict(point_coords=pts, point_labels=np.ones(8), multimask_output=False,
                                            hq_token_only=False)
        return np.where(mask[0], 255, 0).astype(np.uint8)

    def automatic(self, image: np.ndarray) -> list[np.ndarray]:
        return [m["segmentation"] for m in self.generator.generate(image)]


def grounding_masks(models: GroundedSAM, image: np.ndarray, s: dict):
    """(grounding instance mask, grounding background), uint8 each."""
    from usad.models.csad.masks import binary255, combine_filter, merge

    boxes, phrases = models.detect(image, s["text_prompt"], s["box_threshold"], s["text_threshold"])
    words = [w for w in str(s["background_prompt"]).split(".") if w not in ("", " ")]
    is_bg = [any(w in p.replace(" - ", "-") for w in words) for p in phrases]
    masks = models.box_masks(image, boxes)
    background = binary255(np.any(masks[is_bg], 0)) if any(is_bg) else np.zeros(image.shape[:2], np.uint8)
    fg = [binary255(m) for m, bg in zip(masks, is_bg) if not bg]
    if s["filter_by_combine"]:
        fg = combine_filter(fg, s["mask_min_area"], s["combine_overlap"])
    return merge(fg, s["mask_min_area"], image.shape[:2]), background


def masks_from_models(section, images, s: dict, device, save_to: Path | None = None, stems=None):
    """Per image: (masks to cluster, refined masks, background), as ``pseudo_labels.read_mask_folder`` gives."""
    from tqdm import tqdm

    from usad.core.outputs import write_png
    from usad.models.csad.masks import refined_coarse, refined_fine

    models = GroundedSAM(section, device)
    out = []
    for i, image in enumerate(tqdm(images, desc="Grounded-SAM", leave=False)):
        grounding, g_background = grounding_masks(models, image, s)
        sam_background = models.background(image)
        if s["fine_grained"]:
            refined = refined_fine(models.automatic(image), grounding, g_background, sam_background, s)
            cluster = refined
        else:
            refined = refined_coarse(grounding, s)
            cluster = grounding
        out.append((cluster, refined, sam_background))
        if save_to is not None and stems is not None:
            folder = Path(save_to) / stems[i]
            folder.mkdir(parents=True, exist_ok=True)
            for fname, arr in (("refined_masks.png", refined), ("grounding_mask.png", grounding),
                               ("background.png", sam_background)):
                write_png(folder / fname, arr)
    return out
