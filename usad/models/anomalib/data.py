"""anomalib inputs built from this project's file lists, never from anomalib's folder discovery.

anomalib's ``Folder`` datamodule finds the images itself and, by default, moves
half of the test set into validation (``val_split_mode=from_test``); EfficientAD
then computes its map quantiles on that validation set. Here the datamodule gets
exactly ``split.train`` and ``split.validation`` (normal images held out of
``train/good``): it has no test set at all, so nothing of the test set can
reach training, validation or a checkpoint choice.

Images are read the way anomalib's datasets read them (RGB, float in [0, 1])
and resized in the dataset by the model's own ``Resize`` (anomalib's
``AnomalibDataModule`` appends that transform to the dataset augmentations in
``setup``; the pre-processor's resize is then a no-op). Every dataset records the
files it opened (``opened``), so a test can show which files fitting touched.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from anomalib.data import ImageBatch, ImageItem
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.transforms.utils import extract_transforms_by_type
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Resize
from torchvision.transforms.v2.functional import to_dtype, to_image

from usad.core.data.dataset import load_rgb


class FileListDataset(AnomalibDataset):
    """anomalib ``ImageItem``s of ``files`` in the given order, all labelled ``label`` (0 = normal).

    ``opened`` lists every file read, in order, by this process (with ``data.num_workers > 0`` the
    worker processes read them and it stays empty; the tests run with 0).
    """

    def __init__(self, files: list[Path], label: int = 0, augmentations=None):
        super().__init__(augmentations=augmentations)
        self.files = [Path(f) for f in files]
        self.label = label
        samples = pd.DataFrame({"image_path": [str(f) for f in self.files], "split": "train",
                                "label_index": label, "mask_path": ""})
        samples.attrs["task"] = "classification"
        self.samples = samples   # anomalib's setter checks that every file exists
        self.opened: list[Path] = []

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> ImageItem:
        path = self.files[index]
        self.opened.append(path)
        image = to_dtype(to_image(load_rgb(path)), torch.float32, scale=True)  # anomalib's read_image, clear errors
        if self.augmentations is not None:
            image = self.augmentations(image)
        return ImageItem(image=image, gt_label=torch.tensor(self.label), image_path=str(path))


def model_resize(module) -> Resize | None:
    """The ``Resize`` of an anomalib module's pre-processor (the size its network sees)."""
    transform = module.pre_processor.transform if module.pre_processor is not None else None
    resizes = extract_transforms_by_type(transform, Resize) if transform is not None else []
    return resizes[0] if resizes else None


class SplitDataModule(AnomalibDataModule):
    """``train``: split.train; ``val``: split.validation; no test set (``val_split_mode=from_dir``)."""

    def __init__(self, train: list[Path], validation: list[Path], train_batch_size: int, eval_batch_size: int,
                 num_workers: int = 0, seed: int | None = None):
        super().__init__(train_batch_size=train_batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         val_split_mode="from_dir", test_split_mode="none", seed=seed)
        self.train_files, self.validation_files = list(train), list(validation)

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = FileListDataset(self.train_files)
        self.val_data = FileListDataset(self.validation_files)
        self.test_data = FileListDataset([])   # anomalib's setup asks it for normal images: it has none

    def opened(self) -> list[Path]:
        """Every file the train and validation datasets have read so far."""
        return [*getattr(self, "train_data", FileListDataset([])).opened,
                *getattr(self, "val_data", FileListDataset([])).opened]


def loader(files: list[Path], resize: Resize | None, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches (``ImageBatch``) of ``files`` in order, resized like the model's training images."""
    dataset = FileListDataset(files, augmentations=resize)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=ImageBatch.collate)
