"""From scores to decisions: the calibrated operating point, binary masks, boxes, and their metrics.

USAD's fused score ``s = 0.01 s_obj + s_pc + max(M)`` (Eq. 22-23) and map ``M``
have no natural unit: their scale depends on the backbones. An *operating
point* turns them into decisions, calibrated on normal images only (a belt has
no labelled foreign objects to tune on):

- image threshold ``t``: with the n normal calibration scores sorted in
  decreasing order ``s_(1) >= ... >= s_(n)`` and ``k = floor(rate * n)``
  allowed false alarms, ``t = s_(k+1)``. An image is "anomalous" when
  ``score > t``, so at most k of the n calibration images (exactly k without
  ties) are false alarms: the calibrated rate k / n is within 1 / n below the
  rate asked. A rate needs ``n >= ceil(1 / rate)`` images (k >= 1).
- pixel threshold ``p``: the same order statistic of the per-image *maxima*
  of the normal fused maps (at the evaluation size). A pixel is anomalous when
  ``M > p``; so at most k of the n calibration images get any mask pixel: a
  normal belt image shows a box at about the same rate as it is called
  anomalous. Maps resized to an image's own size (bilinear, a convex
  combination) never exceed their maximum, so this holds at any image size.

The operating point file (``<paths.models>/<category>/operating_point.json``,
JSON) holds both thresholds, the rate, the calibration images and scores, the
SHA-256 of the three model files' content (usad.core.artifacts) and the inference
config values that move scores and maps; a file made with other model files or
other such values is refused.

Masks are the fused map, resized to the image's own size, above ``p``; boxes
are their 8-connected components, each ``{x0, y0, x1, y1, area, peak}`` in
the image's own pixels with exclusive ends (``mask[y0:y1, x0:x1]`` holds the
region), ``area`` its pixel count and ``peak`` the largest map value in it.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from usad.core.errors import UsadError
from usad.models.usad.branches import BRANCH_CLASSES, BRANCHES, model_path
from usad.core.outputs import overlay, write_json, write_png

log = logging.getLogger("usad")

FORMAT = "usad-operating-point/1"
FILE_NAME = "operating_point.json"
CALIBRATE_HINT = "python -m usad.calibrate --images NORMAL_IMAGES (or --holdout)"
RATE_EPS = 1e-9          # floor(rate * n) and ceil(1 / rate) without float round-off (0.1 * 30 = 3.0000000000000004)
TRAINING_ONLY = {"patchcore.bank_memmap"}  # config values that change how a branch is fitted, never its scores
BOX_COLOUR = (255, 255, 255)               # RGB: white stands out on the JET overlay
BOX_LINE_FRACTION = 1 / 300                # box line width: this share of the image's longer side (at least 1 px)
CONNECTIVITY = 8                           # regions: 8-connected, as the PRO metrics (usad.core.metrics)


class OperatingPointError(UsadError, ValueError):
    """An operating point that is missing, unreadable, or made with other models or settings."""


# ----------------------------------------------------------------------------- thresholds from normal images

def required_images(rate: float) -> int:
    """The fewest normal images for a false-alarm rate: ``ceil(1 / rate)``, so that one false alarm is allowed."""
    return math.ceil(1 / rate - RATE_EPS)


def allowed_false_alarms(n: int, rate: float) -> int:
    """``k = floor(rate * n)``: calibration images allowed above the threshold."""
    return math.floor(rate * n + RATE_EPS)


def threshold_at_rate(values: np.ndarray, rate: float) -> float:
    """The (k+1)-th largest value, k = floor(rate * n): at most k values are above it (exactly k without ties)."""
    values = np.asarray(values, np.float64)
    k = allowed_false_alarms(len(values), rate)
    return float(np.sort(values)[::-1][k])


def score_config(cfg) -> dict:
    """The inference-only config values that move scores or maps (not recorded in the model files): every
    branch value outside its FIT_KEYS, the fusion and the evaluation size."""
    values = {f"{b}.{k}": v for b in BRANCHES for k, v in cfg[b].items()
              if k not in BRANCH_CLASSES[b].FIT_KEYS and f"{b}.{k}" not in TRAINING_ONLY}
    values.update({f"fusion.{k}": v for k, v in cfg.fusion.items()})
    values["data.eval_size"] = cfg.data.eval_size
    return values


def model_hashes(cfg) -> dict[str, dict]:
    """Each branch's model file and the SHA-256 of its content, as written in it (checked when it is loaded)."""
    hashes = {}
    for b in BRANCHES:
        path = model_path(cfg, b)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            digest = payload.get("sha256") if isinstance(payload, dict) else None
        except Exception:  # missing or unreadable: no hash, so no operating point matches it
            digest = None
        hashes[b] = {"file": str(path), "sha256": digest}
    return hashes


# ----------------------------------------------------------------------------- the operating point file

@dataclass
class OperatingPoint:
    image_threshold: float      # "anomalous" when the fused score is above it
    pixel_threshold: float      # mask = fused map above it
    false_alarm_rate: float     # the rate asked at calibration
    n_images: int               # normal calibration images
    path: Path | None = None
    content: dict = field(default_factory=dict, repr=False)  # the whole file


def operating_point_path(cfg) -> Path:
    return Path(cfg.paths.models) / cfg.data.category / FILE_NAME


def write_operating_point(path: Path, content: dict) -> None:
    write_json(Path(path), {"format": FORMAT, "created": datetime.datetime.now().isoformat(timespec="seconds"),
                            **content})


REQUIRED = {"image_threshold": float, "pixel_threshold": float, "false_alarm_rate": float, "n_images": int,
            "models": dict, "score_config": dict}


def _has_type(value, kind: type) -> bool:
    if kind in (int, float):
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        return ok and math.isfinite(value)
    return isinstance(value, kind)


def read_operating_point(path: Path, cfg) -> OperatingPoint:
    """Read an operating point file and check it against the model files and config now in use."""
    path = Path(path)
    if not path.is_file():
        raise OperatingPointError(f"operating point file {path} does not exist: create it with `{CALIBRATE_HINT}`")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise OperatingPointError(f"{path} is not a readable operating point file ({type(e).__name__}: {e}); "
                                  f"recalibrate with `{CALIBRATE_HINT}`") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise OperatingPointError(f"{path} is not a usad operating point file (format {FORMAT}); "
                                  f"recalibrate with `{CALIBRATE_HINT}`")
    bad = [k for k, kind in REQUIRED.items() if not _has_type(content.get(k), kind)]
    if bad:
        raise OperatingPointError(f"{path}: {', '.join(bad)} missing or of the wrong type (thresholds and rate: finite "
                                  f"numbers, n_images: an integer, models and score_config: mappings); recalibrate "
                                  f"with `{CALIBRATE_HINT}`")
    check_models(path, content["models"], cfg)
    check_score_config(path, content["score_config"], cfg)
    return OperatingPoint(float(content["image_threshold"]), float(content["pixel_threshold"]),
                          float(content["false_alarm_rate"]), int(content["n_images"]), path, content)


def check_models(path: Path, recorded: dict, cfg) -> None:
    """Refuse an operating point calibrated with other model files (their content SHA-256 differs)."""
    now = model_hashes(cfg)
    then = {b: recorded[b].get("sha256") if isinstance(recorded.get(b), dict) else None for b in BRANCHES}
    diffs = [f"{b}: calibrated with {str(then[b])[:12]}, {now[b]['file']} has {str(now[b]['sha256'])[:12]}"
             for b in BRANCHES if then[b] != now[b]["sha256"] or now[b]["sha256"] is None]
    if diffs:
        raise OperatingPointError(f"{path} was calibrated with other model files ({'; '.join(diffs)}): its thresholds "
                                  f"do not apply to these models. Recalibrate with `{CALIBRATE_HINT}`")


def check_score_config(path: Path, recorded: dict, cfg) -> None:
    """Refuse an operating point calibrated with other inference values (tau, sigmas, k, fusion, eval size)."""
    now = score_config(cfg)
    diffs = [f"{k}: file has {recorded.get(k, '<missing>')!r}, config has {v!r}"
             for k, v in now.items() if recorded.get(k, "<missing>") != v]
    if diffs:
        raise OperatingPointError(f"{path} was calibrated with other scoring settings ({'; '.join(diffs)}): use the "
                                  f"config it was made with, or recalibrate with `{CALIBRATE_HINT}`")


def load_operating_point(cfg, path: str | Path | None = None) -> OperatingPoint | None:
    """The operating point named by ``path`` (which must exist), else the config's default file if it exists."""
    if path is not None:
        return read_operating_point(Path(path), cfg)
    default = operating_point_path(cfg)
    return read_operating_point(default, cfg) if default.is_file() else None


# ----------------------------------------------------------------------------- masks and boxes

@dataclass(frozen=True)
class Thresholds:
    """What turns a score and a map into decisions (None: that decision is not made)."""

    image: float | None = None   # verdict "anomalous" when score > image
    pixel: float | None = None   # mask = fused map > pixel
    min_area: int = 0            # boxes of fewer mask pixels are dropped (pixels of the image's own size)


def verdict(score: float, threshold: float | None) -> str | None:
    return None if threshold is None else ("anomalous" if score > threshold else "normal")


def binary_mask(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """The pixels of the map above the pixel threshold (bool, the map's shape)."""
    return np.asarray(anomaly_map) > threshold


def regions(anomaly_map: np.ndarray, threshold: float, min_area: int = 0) -> tuple[np.ndarray, list[dict]]:
    """The binary mask (map > threshold, bool) without its regions under ``min_area`` pixels, and its
    8-connected regions as boxes ``{x0, y0, x1, y1, area, peak}`` (ends exclusive, in the map's pixels;
    ``area`` = pixel count, ``peak`` = largest map value in the region), strongest peak first."""
    anomaly_map = np.asarray(anomaly_map)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary_mask(anomaly_map, threshold).astype(np.uint8),
                                                           connectivity=CONNECTIVITY)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False                       # label 0 is the background
    peaks = np.full(n, -np.inf)
    inside = labels > 0
    np.maximum.at(peaks, labels[inside], anomaly_map[inside].astype(np.float64))
    boxes = [{"x0": int(x), "y0": int(y), "x1": int(x + w), "y1": int(y + h), "area": int(area), "peak": float(peaks[j])}
             for j, (x, y, w, h, area) in enumerate(stats) if keep[j]]
    return keep[labels], sorted(boxes, key=lambda b: -b["peak"])


def draw_boxes(rgb: np.ndarray, boxes: list[dict], colour=BOX_COLOUR) -> np.ndarray:
    """A copy of the RGB image with each box outlined (inside its pixels)."""
    out = np.ascontiguousarray(rgb).copy()
    line = max(1, round(max(out.shape[:2]) * BOX_LINE_FRACTION))
    for b in boxes:
        cv2.rectangle(out, (b["x0"], b["y0"]), (b["x1"] - 1, b["y1"] - 1), colour, line)
    return out


def overlay_with_boxes(image_rgb: np.ndarray, anomaly_map: np.ndarray, boxes: list[dict]) -> np.ndarray:
    """The fused map (min-max scaled, JET) over the image at its own size, with the boxes drawn on it."""
    return draw_boxes(overlay(image_rgb, anomaly_map), boxes)


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """A binary mask as a one-channel PNG, 255 = anomalous (like the ground-truth masks), atomically."""
    write_png(path, mask.astype(np.uint8) * 255)


# ----------------------------------------------------------------------------- metrics at the operating point

def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def image_decision_metrics(labels: np.ndarray, anomalous: np.ndarray) -> dict:
    """Precision, recall, F1 and false-alarm rate (false positives / normal images) of image verdicts."""
    labels, anomalous = np.asarray(labels).astype(bool), np.asarray(anomalous).astype(bool)
    tp, fp = int((anomalous & labels).sum()), int((anomalous & ~labels).sum())
    fn, tn = int((~anomalous & labels).sum()), int((~anomalous & ~labels).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "f1": f1, "false_alarm_rate": _ratio(fp, fp + tn),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def region_hits(gt: np.ndarray, boxes: list[dict]) -> tuple[int, int]:
    """(ground-truth 8-connected regions of one mask, how many of them have a pixel inside a predicted box)."""
    n, labels = cv2.connectedComponents(gt.astype(np.uint8), connectivity=CONNECTIVITY)
    covered = np.zeros(gt.shape, bool)
    for b in boxes:
        covered[b["y0"]:b["y1"], b["x0"]:b["x1"]] = True
    return n - 1, int(np.count_nonzero(np.unique(labels[covered & (labels > 0)])))


def mask_metrics(maps: np.ndarray, gt_masks: np.ndarray, labels: np.ndarray, pixel_threshold: float) -> dict:
    """Pixel IoU and Dice of the binary masks against the ground truth (pooled over every pixel of every image),
    region recall (share of ground-truth regions a predicted box overlaps), and the share of normal images
    with any mask pixel."""
    inter = union = pred_sum = gt_sum = n_regions = found = normal_with_mask = 0
    for m, gt, label in zip(maps, gt_masks, labels):
        (pred, boxes), gt = regions(m, pixel_threshold), gt.astype(bool)
        inter += int(np.count_nonzero(pred & gt))
        union += int(np.count_nonzero(pred | gt))
        pred_sum, gt_sum = pred_sum + int(np.count_nonzero(pred)), gt_sum + int(np.count_nonzero(gt))
        normal_with_mask += int(label == 0 and pred.any())
        if gt.any():
            n, hit = region_hits(gt, boxes)
            n_regions, found = n_regions + n, found + hit
    return {"iou": _ratio(inter, union), "dice": _ratio(2 * inter, pred_sum + gt_sum),
            "region_recall": _ratio(found, n_regions), "n_regions": n_regions, "n_regions_found": found,
            "normal_images_with_mask": _ratio(normal_with_mask, int(np.sum(np.asarray(labels) == 0)))}


def operating_point_section(cfg, preds) -> dict | None:
    """The ``operating_point`` section of metrics.json for one evaluation's predictions, at the operating point
    in ``<paths.models>/<category>/operating_point.json``; None when there is none (or, with a warning, when
    it does not belong to these models or settings: the evaluation itself stays valid)."""
    try:
        op = load_operating_point(cfg)
    except OperatingPointError as e:
        log.warning("operating point metrics skipped: %s", e)
        return None
    if op is None:
        return None
    decisions = mask_metrics(preds.maps["m_fused"], preds.mask, preds.label, op.pixel_threshold)
    section = {"file": str(op.path), "image_threshold": op.image_threshold, "pixel_threshold": op.pixel_threshold,
               "calibration_false_alarm_rate": op.false_alarm_rate, "n_calibration_images": op.n_images,
               "image": image_decision_metrics(preds.label, preds.scores["s_fused"] > op.image_threshold),
               "pixel": {k: decisions[k] for k in ("iou", "dice", "normal_images_with_mask")},
               "region": {"recall": decisions["region_recall"], "n_regions": decisions["n_regions"],
                          "n_found": decisions["n_regions_found"]}}
    root = Path(cfg.data.root) / cfg.data.category
    calibration = {img.get("file") for img in op.content.get("images", []) if isinstance(img, dict)}
    in_test = sum(str((root / f).resolve()) in calibration for f in preds.files)
    section["calibration_images_in_test"] = in_test
    if in_test:
        log.warning("%d test image(s) were calibration images of %s: the operating-point false-alarm rate is "
                    "in-sample for them (calibrate on held-out normals: --holdout)", in_test, op.path)
    return section


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def format_operating_point(section: dict) -> str:
    """The operating-point section as a short printed table (percentages)."""
    i, p, r = section["image"], section["pixel"], section["region"]
    return "\n".join([
        f"At the operating point ({section['file']}: image threshold {section['image_threshold']:.6g}, pixel "
        f"threshold {section['pixel_threshold']:.6g}, {_pct(section['calibration_false_alarm_rate'])}% false alarms "
        f"asked on {section['n_calibration_images']} normal images)",
        f"image   precision {_pct(i['precision'])}  recall {_pct(i['recall'])}  F1 {_pct(i['f1'])}  "
        f"false-alarm rate {_pct(i['false_alarm_rate'])}  (tp {i['tp']}, fp {i['fp']}, fn {i['fn']}, tn {i['tn']})",
        f"pixel   IoU {_pct(p['iou'])}  Dice {_pct(p['dice'])}  normal images with a mask {_pct(p['normal_images_with_mask'])}",
        f"region  recall {_pct(r['recall'])}  ({r['n_found']} of {r['n_regions']} ground-truth regions "
        f"overlapped by a box)",
    ])
