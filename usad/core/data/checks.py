"""Dataset checks before any compute: every problem at once, each with its path and the fix.

The files checked are exactly the dataset's own (``train_samples`` /
``test_samples``), so the checks and the loaders always agree on what is used.

Errors (the run stops; all of them are listed in one ``DatasetError``):
- a missing category, ``train/good``, ``test`` or ``ground_truth`` folder, or one without images;
- fewer than 2 training images (a covariance needs 2);
- a test split with only normal or only anomalous images (the metrics need both);
- an image or mask that cannot be fully decoded (unreadable, truncated, not an image);
- an anomalous test image without its mask, or with a mask of another size;
- a mask with no anomalous pixel (none >= 128 of 255): after binarisation the
  image would have an empty ground truth, contradicting its anomalous label.
Notes (the run goes on; they are logged as warnings and returned):
- grayscale / RGBA / palette / CMYK images: converted to RGB;
- 16-bit or float images: converted to 8-bit RGB by clipping at 255;
- masks with values other than 0 and 255: binarised, >= 128 of 255 is anomalous;
- non-square images (stretched to a square) and, given ``eval_size``, test
  images smaller than it (upsampled);
- hidden files, non-image files and masks without a test image: ignored.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from usad.core.data.dataset import MIN_TRAIN, NORMAL_KIND, DatasetError, Sample, require_category_dir, test_samples, train_samples

log = logging.getLogger(__name__)

MAX_LISTED = 20             # problems listed in full; the rest are counted
MASK_THRESHOLD = 128        # mask pixels >= 128 of 255 are anomalous (as mask_transform)
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # converted to 8 bits by clipping


@dataclass
class Findings:
    """What one image (and its mask) showed: problems stop the run, the rest become notes."""

    problems: list[str]
    mode: str | None = None          # image mode before conversion to RGB
    size: tuple[int, int] | None = None
    nonbinary_mask: bool = False


def decode(path: Path, mode: str) -> tuple[Image.Image | None, str | None, str | None]:
    """``(image converted to mode, original mode, None)``, or ``(None, None, reason)`` if it cannot be fully decoded."""
    try:
        with Image.open(path) as im:
            im.load()                # decodes every pixel: truncation is caught here
            return im.convert(mode), im.mode, None
    except Exception as e:           # PIL raises many types for damaged files
        return None, None, f"{type(e).__name__}: {e}"


def inspect_sample(sample: Sample) -> Findings:
    """Decode one image as the loader does (RGB) and, for an anomalous image, its mask (L)."""
    image, mode, err = decode(sample.path, "RGB")
    if image is None:
        return Findings([f"{sample.path}: cannot be decoded ({err}); replace or delete it"])
    found = Findings([], mode, image.size)
    if sample.mask_path is None:
        return found
    if not sample.mask_path.is_file():
        found.problems.append(f"{sample.path}: anomalous test image without its mask; expected {sample.mask_path} "
                              f"(add it, or move the image to test/{NORMAL_KIND} if it is normal)")
        return found
    mask, _, err = decode(sample.mask_path, "L")
    if mask is None:
        found.problems.append(f"{sample.mask_path}: mask cannot be decoded ({err}); replace it")
    elif mask.size != image.size:
        found.problems.append(f"{sample.mask_path}: mask is {mask.size[0]}x{mask.size[1]} but its image "
                              f"{sample.path.name} is {image.size[0]}x{image.size[1]}; a mask must have the size of its image")
    else:
        values = np.asarray(mask)
        if not (values >= MASK_THRESHOLD).any():
            found.problems.append(f"{sample.mask_path}: mask has no anomalous pixel (none >= {MASK_THRESHOLD} of 255); "
                                  f"fix the mask, or move {sample.path.name} to test/{NORMAL_KIND} if it is normal")
        else:
            found.nonbinary_mask = not np.isin(values, (0, 255)).all()
    return found


def listed_samples(samples_of, root: Path, folder: Path, expected: str, problems: list[str]) -> list[Sample]:
    """The dataset's own sample list for one split, or [] with the folder's problem recorded."""
    if not folder.is_dir():
        problems.append(f"{folder}: missing; expected {expected}")
        return []
    try:
        return samples_of(root)
    except DatasetError:
        problems.append(f"{folder}: no images; expected {expected}")
        return []


def ignored_count(folder: Path, samples: list[Sample]) -> int:
    """Files under ``folder`` the dataset does not use (hidden, not an image, outside a class folder)."""
    return sum(1 for p in folder.rglob("*") if p.is_file()) - len(samples) if folder.is_dir() else 0


def orphan_masks(root: Path, samples: list[Sample]) -> list[Path]:
    """Mask files under ``ground_truth`` that belong to no test image (e.g. the image was not copied)."""
    gt = root / "ground_truth"
    used = {s.mask_path for s in samples if s.mask_path is not None}
    return sorted(p for p in gt.rglob("*_mask.*") if p.is_file() and p not in used) if gt.is_dir() else []


def example(paths: list[Path]) -> str:
    return f"e.g. {paths[0]}" + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else "")


def collect_notes(root: Path, splits: dict[str, list[Sample]], findings: list[Findings], eval_size: int | None) -> list[str]:
    """Everything accepted as it is or converted, one line per kind of note."""
    samples = [s for group in splits.values() for s in group]
    seen = [(s, f) for s, f in zip(samples, findings) if f.mode is not None]
    wide = [s.path for s, f in seen if f.mode in WIDE_MODES]
    converted = [s.path for s, f in seen if f.mode != "RGB" and f.mode not in WIDE_MODES]
    nonsquare = [s.path for s, f in seen if f.size[0] != f.size[1]]
    test_paths = {s.path for s in splits.get("test", ())}
    small = [s.path for s, f in seen if eval_size and s.path in test_paths and min(f.size) < eval_size]
    nonbinary = [s.mask_path for s, f in seen if f.nonbinary_mask]
    notes = []
    if converted:
        notes.append(f"{len(converted)} image(s) not RGB (grayscale/RGBA/palette/CMYK), converted to RGB, {example(converted)}")
    if wide:
        notes.append(f"{len(wide)} image(s) with 16-bit or float pixels, converted to 8-bit RGB by clipping at 255 "
                     f"(brighter values are lost; convert them to 8 bits yourself to choose the scaling), {example(wide)}")
    if nonbinary:
        notes.append(f"{len(nonbinary)} mask(s) not strictly 0/255, binarised at >= {MASK_THRESHOLD} of 255 "
                     f"(pixels >= {MASK_THRESHOLD} are anomalous), {example(nonbinary)}")
    if nonsquare:
        notes.append(f"{len(nonsquare)} image(s) not square, stretched to a square when resized, {example(nonsquare)}")
    if small:
        notes.append(f"{len(small)} test image(s) smaller than the evaluation size {eval_size}, upsampled, {example(small)}")
    for split, group in splits.items():
        n = ignored_count(root / split, group)
        if n:
            notes.append(f"{n} hidden or non-image file(s) under {root / split} ignored")
    if "test" in splits:
        orphans = orphan_masks(root, splits["test"])
        if orphans:
            notes.append(f"{len(orphans)} mask(s) under {root / 'ground_truth'} without a test image, ignored, {example(orphans)}")
    return notes


def check_dataset(category_dir, eval_size: int | None = None, splits=("train", "test")) -> list[str]:
    """Check an MVTec-AD category folder before any compute; raise ONE DatasetError listing every problem.

    Every image (and mask) the dataset will load is fully decoded, in parallel
    threads. ``splits`` picks ``"train"`` and/or ``"test"``; ``eval_size``
    adds a note for test images smaller than the evaluation size.
    Returns the notes (also logged as warnings) about what was accepted.
    """
    root = require_category_dir(category_dir)
    problems: list[str] = []
    chosen: dict[str, list[Sample]] = {}
    if "train" in splits:
        chosen["train"] = listed_samples(train_samples, root, root / "train" / NORMAL_KIND,
                                         "the normal training images there (*.png)", problems)
        if 0 < len(chosen["train"]) < MIN_TRAIN:
            problems.append(f"{root / 'train' / NORMAL_KIND}: only {len(chosen['train'])} training image; at least "
                            f"{MIN_TRAIN} are needed (MACLU and MA2Patch fit a covariance); add normal images there")
    if "test" in splits:
        test = root / "test"
        chosen["test"] = listed_samples(test_samples, root, test,
                                        f"{test}/{NORMAL_KIND}/*.png and {test}/<kind>/*.png", problems)
        anomalous = [s for s in chosen["test"] if s.mask_path is not None]
        if chosen["test"] and not anomalous:
            problems.append(f"{test}: only normal test images ({len(chosen['test'])} in {test / NORMAL_KIND}); the "
                            f"metrics (AUROC, PRO) need anomalous ones too: add test/<kind>/*.png with masks at "
                            f"ground_truth/<kind>/<name>_mask.png")
        if anomalous and len(anomalous) == len(chosen["test"]):
            problems.append(f"{test / NORMAL_KIND}: no normal test images (all {len(anomalous)} are anomalous); the "
                            f"metrics (AUROC, PRO) need normal ones too: add normal test images there")
        if anomalous and not (root / "ground_truth").is_dir():
            problems.append(f"{root / 'ground_truth'}: missing; the {len(anomalous)} anomalous test images need masks "
                            f"at ground_truth/<kind>/<name>_mask.png")
            chosen["test"] = [s for s in chosen["test"] if s.mask_path is None] + [
                Sample(s.path, s.label, s.kind, None) for s in anomalous]  # decode the images, skip the masks
    samples = [s for group in chosen.values() for s in group]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        findings = list(pool.map(inspect_sample, samples))
    problems += [p for f in findings for p in f.problems]
    if problems:
        listed = "\n  - ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DatasetError(f"{len(problems)} problem(s) in dataset {root}:\n  - {listed}{more}")
    notes = collect_notes(root, chosen, findings, eval_size)
    for note in notes:
        log.warning("dataset %s: %s", root, note)
    return notes
