"""MVTec-AD-layout datasets with the exact transforms of the reference (Sec. 1).

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<kind>/*.png          (kind "good" = normal)
    <root>/<category>/ground_truth/<kind>/<name>_mask.png

File order is torchvision ``ImageFolder``'s: class folders sorted, then files
sorted. Training images: PIL bilinear resize to the branch size. Test images:
PIL bicubic resize to the evaluation size; masks nearest, binarised at 128
(values {0, 1}); normal images get an all-zero mask. Images are resized to a
square ``size x size`` (identical to the reference's shorter-side resize for
square images such as CoalAD's; other aspect ratios are stretched).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from usad.core.errors import UsadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NORMAL_KIND = "good"
MIN_TRAIN = 2               # a covariance (MACLU, MA2Patch) needs 2 images; PatchCore takes half of them


class DatasetError(UsadError, RuntimeError):
    """A dataset folder or file that cannot be used as it is."""


def train_transform(size: int) -> transforms.Compose:
    """Sec. 1: training images, bilinear PIL resize, ToTensor, ImageNet normalisation."""
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def test_transform(size: int) -> transforms.Compose:
    """Sec. 1: test images, bicubic PIL resize to the evaluation size."""
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def mask_transform(size: int) -> transforms.Compose:
    """Sec. 1: masks, nearest resize, binarised (>= 128 of 255 is anomalous)."""
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.NEAREST),
        transforms.PILToTensor(),
        transforms.Lambda(lambda m: (m[0] >= 128).float()),
    ])


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (recursively), in ImageFolder's sorted order; hidden/non-image files ignored."""
    return sorted((p for p in folder.rglob("*") if is_image_file(p) and not any(
        part.startswith(".") for part in p.relative_to(folder).parts)), key=lambda p: p.relative_to(folder).parts)


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB (grayscale / RGBA are converted); clear error for unreadable files."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:
        raise DatasetError(f"cannot read image {path}: {type(e).__name__}: {e}. Replace or remove this file.") from None


def mask_path_for(category_dir: Path, image: Path) -> Path:
    kind = image.parent.name
    return category_dir / "ground_truth" / kind / f"{image.stem}_mask.png"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int                 # 0 normal, 1 anomalous
    kind: str
    mask_path: Path | None     # None for normal images

    def relative(self, category_dir: Path) -> str:
        return self.path.relative_to(category_dir).as_posix()


def require_category_dir(category_dir: Path) -> Path:
    category_dir = Path(category_dir)
    if not category_dir.is_dir():
        raise DatasetError(
            f"dataset folder {category_dir} does not exist. Create the MVTec-AD layout "
            f"{category_dir}/train/good/*.png, {category_dir}/test/<kind>/*.png, "
            f"{category_dir}/ground_truth/<kind>/<name>_mask.png, or enable data.download for CoalAD."
        )
    return category_dir


def train_samples(category_dir: Path) -> list[Sample]:
    folder = require_category_dir(category_dir) / "train" / NORMAL_KIND
    files = list_images(folder) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"no training images in {folder}: put the normal images there (*.png)")
    return [Sample(p, 0, NORMAL_KIND, None) for p in files]


def holdout_split(samples: list[Sample], ratio: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """``data.holdout_ratio``: the training images as (fitted, held out), both in file order.

    ``round(ratio * n)`` images, drawn by a NumPy generator seeded with ``seed`` (the config's top-level
    seed), are kept out of fitting for all three branches, so that ``python -m usad.calibrate --holdout``
    can score normal images the models have never seen. Ratio 0 (the default) keeps every image: the
    paper's training set.
    """
    if ratio == 0:
        return list(samples), []

    n_out = round(ratio * len(samples))
    if n_out == 0 or len(samples) - n_out < MIN_TRAIN:
        folder = samples[0].path.parent if samples else "train/good"
        raise DatasetError(f"data.holdout_ratio = {ratio} of the {len(samples)} training images in {folder} holds out "
                           f"{n_out} and leaves {len(samples) - n_out} for fitting: at least 1 must be held out and "
                           f"{MIN_TRAIN} fitted. Choose another ratio or add training images")
    out = set(np.random.default_rng(seed).permutation(len(samples))[:n_out].tolist())
    return [s for i, s in enumerate(samples) if i not in out], [s for i, s in enumerate(samples) if i in out]


def test_samples(category_dir: Path) -> list[Sample]:
    category_dir = require_category_dir(category_dir)
    test_dir = category_dir / "test"
    kinds = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")) if test_dir.is_dir() else []
    samples = []
    for kind in kinds:
        for p in list_images(test_dir / kind):
            if kind == NORMAL_KIND:
                samples.append(Sample(p, 0, kind, None))
            else:
                samples.append(Sample(p, 1, kind, mask_path_for(category_dir, p)))
    if not samples:
        raise DatasetError(f"no test images in {test_dir}: expected {test_dir}/good/*.png and {test_dir}/<kind>/*.png")
    return samples


class TrainDataset(Dataset):
    """Normal training images at one branch's size (bilinear)."""

    def __init__(self, category_dir: Path, image_size: int, samples: list[Sample] | None = None):
        self.category_dir = Path(category_dir)
        self.samples = samples if samples is not None else train_samples(self.category_dir)
        self.transform = train_transform(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_rgb(self.samples[i].path))


class TestDataset(Dataset):
    """Test images (bicubic) and binary masks at the evaluation size, with labels."""

    def __init__(self, category_dir: Path, eval_size: int, samples: list[Sample] | None = None):
        self.category_dir = Path(category_dir)
        self.samples = samples if samples is not None else test_samples(self.category_dir)
        self.eval_size = eval_size
        self.transform = test_transform(eval_size)
        self.mask_transform = mask_transform(eval_size)

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, s: Sample) -> torch.Tensor:
        if s.mask_path is None:
            return torch.zeros(self.eval_size, self.eval_size)
        if not s.mask_path.is_file():
            raise DatasetError(f"anomalous test image {s.path} has no mask: expected {s.mask_path}")
        try:
            with Image.open(s.mask_path) as m:
                m = m.convert("L")
        except Exception as e:
            raise DatasetError(f"cannot read mask {s.mask_path}: {type(e).__name__}: {e}") from None
        return self.mask_transform(m)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        return {"image": self.transform(load_rgb(s.path)), "mask": self.load_mask(s), "label": s.label, "index": i}


GPU_MAX_WORKERS = 8  # data-loading processes for num_workers: auto on a GPU (at most; one core stays for the main process)
GPU_PREFETCH = 4  # batches each worker keeps decoded ahead on a GPU (PyTorch's default is 2)


def loader_workers(num_workers: int | str, device: torch.device) -> int:
    """``data.num_workers``: a number, or auto = none on CPU, where workers take cores from the model
    (measured: evaluation 12 % slower with 2 workers on 2 cores), and on a GPU one per free core up to
    ``GPU_MAX_WORKERS``: PNG decoding and resizing are then what keeps the GPU fed."""
    if num_workers != "auto":
        return num_workers
    if device.type != "cuda":
        return 0
    return max(1, min(GPU_MAX_WORKERS, len(os.sched_getaffinity(0)) - 1))


def make_loader(dataset: Dataset, batch_size: int, num_workers: int | str, device: torch.device) -> DataLoader:
    """Ordered batches. On CUDA: worker processes that stay up across passes over the data, each
    ``GPU_PREFETCH`` batches ahead, into pinned memory (so ``.to(device, non_blocking=True)`` copies
    asynchronously). On CPU: as given (``num_workers="auto"``: in the main process)."""
    workers = loader_workers(num_workers, device)
    if device.type != "cuda":
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                          pin_memory=False, persistent_workers=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=True,
                      persistent_workers=workers > 0, prefetch_factor=GPU_PREFETCH if workers > 0 else None)
