"""anomalib's Lightning modules, with local weights and the official code's optimiser settings.

Each class is anomalib's own (its networks, losses, training step, hooks), changed only where
anomalib would download or where it departs from the authors' code:
- ``LocalEfficientAd``: the pretrained teacher comes from ``efficientad.teacher_weights`` (anomalib
  downloads it into its cache in ``on_train_start``); the penalty images from
  ``efficientad.imagenet_dir`` (checked to exist, so anomalib's Imagenette download never runs);
  the learning rate drops tenfold after 95 % of the *steps*, as in the paper (anomalib returns its
  StepLR without ``interval``, so Lightning steps it once an epoch and it never drops).
- ``OfficialDraem``: the authors' optimiser (VitjanZ/DRAEM ``train_DRAEM.py``: Adam, MultiStepLR at
  0.8 and 0.9 of the epochs, gamma 0.2; anomalib hard-codes epochs 400 and 600, gamma 0.1) and
  their weight initialisation (conv N(0, 0.02), batch-norm N(1, 0.02); anomalib keeps PyTorch's).
- ``OfficialReverseDistillation``: the authors' Adam (hq-deng/RD4AD ``main.py``: lr 0.005,
  betas (0.5, 0.999); anomalib uses betas (0.5, 0.99)).
"""

from __future__ import annotations

from pathlib import Path

import torch
from anomalib.models import Draem, EfficientAd, ReverseDistillation
from torch import nn

from usad.models.anomalib.weights import load_teacher, random_weights_warning


class LocalEfficientAd(EfficientAd):
    """EfficientAD whose teacher is a local file (``teacher_path``), or random when None (``pretrained: false``)."""

    def __init__(self, teacher_path: Path | None, teacher_key: str, **kwargs):
        super().__init__(**kwargs)
        self.teacher_path, self.teacher_key = teacher_path, teacher_key

    def prepare_pretrained_model(self) -> None:
        # anomalib: download efficientad_pretrained_weights.zip into its cache, load pretrained_teacher_<size>.pth
        if self.teacher_path is None:
            random_weights_warning("EfficientAD's teacher", self.teacher_key.rsplit(".", 1)[0] + ".pretrained")
            return
        load_teacher(self.model.teacher, self.teacher_path, self.teacher_key)

    def configure_optimizers(self):
        config = super().configure_optimizers()
        config["lr_scheduler"] = {"scheduler": config["lr_scheduler"], "interval": "step"}
        return config

    def prepare_imagenette_data(self, image_size) -> None:
        if not self.imagenet_dir.is_dir():  # checked before training; never reach anomalib's download
            raise FileNotFoundError(f"EfficientAD penalty folder {self.imagenet_dir} disappeared")
        super().prepare_imagenette_data(image_size)


def official_draem_init(module: nn.Module) -> None:
    """DRAEM's ``weights_init``: conv weights N(0, 0.02); batch-norm weights N(1, 0.02), biases 0."""
    name = module.__class__.__name__
    if "Conv" in name:
        module.weight.data.normal_(0.0, 0.02)
    elif "BatchNorm" in name:
        module.weight.data.normal_(1.0, 0.02)
        module.bias.data.fill_(0)


class OfficialDraem(Draem):
    """DRAEM with the authors' learning-rate schedule (``milestones`` as fractions of the epochs) and init."""

    def __init__(self, lr: float, milestones: list[float], gamma: float, official_init: bool, **kwargs):
        super().__init__(**kwargs)
        self.lr, self.milestones, self.gamma = lr, list(milestones), gamma
        if official_init:
            self.model.apply(official_draem_init)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(params=self.model.parameters(), lr=self.lr)
        epochs = self.trainer.max_epochs
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[f * epochs for f in self.milestones],
                                                         gamma=self.gamma)
        return [optimizer], [scheduler]


class OfficialReverseDistillation(ReverseDistillation):
    """RD4AD with the authors' Adam (learning rate and betas from the config)."""

    def __init__(self, lr: float, betas: tuple[float, float], **kwargs):
        super().__init__(**kwargs)
        self.lr, self.betas = lr, tuple(betas)

    def configure_optimizers(self):
        return torch.optim.Adam(params=list(self.model.decoder.parameters()) + list(self.model.bottleneck.parameters()),
                                lr=self.lr, betas=self.betas)
