"""Dataset checks before any compute: every problem at once, each with its path and the fix.

Errors (the run stops, all of them listed in one DatasetError):
- a missing category, ``train/good`` or ``test`` folder, or one without images;
- an image that cannot be decoded (unreadable, truncated, not an image);
- an anomalous test image without its mask, an unreadable mask, a mask whose
  size differs from its image, a mask with no anomalous pixel.
Notes (the run goes on, they are logged):
- grayscale / RGBA / palette images: converted to RGB;
- masks with values other than 0 and 255: binarised, >= 128 is anomalous;
- hidden files and non-image files in the folders: ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import NORMAL_KIND, DatasetError, list_images, mask_path_for

log = logging.getLogger(__name__)

MAX_LISTED = 20  # problems listed in full; the rest are counted


def _open(path: Path) -> tuple[Image.Image | None, str | None]:
    """The fully decoded image, or the reason it cannot be read."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy(), None
    except Exception as e:  # PIL raises many types for damaged files
        return None, f"{type(e).__name__}: {e}"


def _ignored(folder: Path) -> int:
    """Files under ``folder`` that the dataset skips (hidden or not an image)."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file()) - len(list_images(folder))


def _check_image(path: Path, problems: list[str], converted: list[Path]) -> Image.Image | None:
    im, err = _open(path)
    if im is None:
        problems.append(f"{path}: cannot be decoded ({err}); replace or delete it")
    elif im.mode != "RGB":
        converted.append(path)
    return im


def _check_mask(image_path: Path, image: Image.Image | None, mask_path: Path, problems: list[str], nonbinary: list[Path]) -> None:
    if not mask_path.is_file():
        problems.append(f"{image_path}: anomalous test image without its mask; expected {mask_path}")
        return
    mask, err = _open(mask_path)
    if mask is None:
        problems.append(f"{mask_path}: mask cannot be decoded ({err}); replace it")
        return
    if image is not None and mask.size != image.size:
        problems.append(f"{mask_path}: mask is {mask.size[0]}x{mask.size[1]} but its image {image_path.name} is "
                        f"{image.size[0]}x{image.size[1]}; masks must have the size of their image")
        return
    values = np.asarray(mask.convert("L"))
    if not (values >= 128).any():
        problems.append(f"{mask_path}: mask has no anomalous pixel (none >= 128 of 255); fix it or move the image to test/good")
    elif not np.isin(values, (0, 255)).all():
        nonbinary.append(mask_path)


def check_dataset(category_dir, splits=("train", "test")) -> list[str]:
    """Check the given splits of an MVTec-AD folder; raise one DatasetError listing every problem.

    Returns notes about things that were accepted (conversions, ignored files).
    """
    root = Path(category_dir)
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist. Create the MVTec-AD layout {root}/train/good/*.png, "
            f"{root}/test/<kind>/*.png, {root}/ground_truth/<kind>/<name>_mask.png (or enable data.download for CoalAD)."
        )
    problems, converted, nonbinary, notes = [], [], [], []
    if "train" in splits:
        folder = root / "train" / NORMAL_KIND
        files = list_images(folder) if folder.is_dir() else []
        if not folder.is_dir():
            problems.append(f"{folder}: missing; put the normal training images there")
        elif not files:
            problems.append(f"{folder}: no images; put the normal training images there (*.png)")
        for p in files:
            _check_image(p, problems, converted)
        n = _ignored(root / "train")
        if n:
            notes.append(f"{n} hidden or non-image file(s) under {root / 'train'} ignored")
    if "test" in splits:
        test = root / "test"
        kinds = sorted(d for d in test.iterdir() if d.is_dir() and not d.name.startswith(".")) if test.is_dir() else []
        files = [p for k in kinds for p in list_images(k)]
        if not test.is_dir():
            problems.append(f"{test}: missing; expected {test}/good/*.png and {test}/<kind>/*.png")
        elif not files:
            problems.append(f"{test}: no images; expected {test}/good/*.png and {test}/<kind>/*.png")
        for p in files:
            im = _check_image(p, problems, converted)
            if p.parent.name != NORMAL_KIND:
                _check_mask(p, im, mask_path_for(root, p), problems, nonbinary)
        n = _ignored(test)
        if n:
            notes.append(f"{n} hidden or non-image file(s) under {test} ignored")
    if converted:
        notes.append(f"{len(converted)} image(s) not RGB (grayscale/RGBA/palette), converted to RGB, e.g. {converted[0]}")
    if nonbinary:
        notes.append(f"{len(nonbinary)} mask(s) not strictly 0/255, binarised at >= 128, e.g. {nonbinary[0]}")
    if problems:
        listed = "\n  - ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DatasetError(f"{len(problems)} problem(s) in dataset {root}:\n  - {listed}{more}")
    for note in notes:
        log.warning("dataset %s: %s", root, note)
    return notes
