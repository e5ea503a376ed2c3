"""NPGMF's structural anomaly detection module (Sec. III-B, Eq. 8-10): PatchCore on ResNeXt-101 features.

This is the project's PatchCore (usad.models.usad.patchcore, with usad.core.sampler's greedy
coreset) given another backbone: locally aware layer2 + layer3 patch features of the training
images form the memory bank (Eq. 8), reduced by the greedy coreset (sparse random projection);
a test patch's score is its distance to the nearest bank vector (Eq. 9-10). The map is the grid
of those raw distances, up-sampled bilinearly to the map size; it is not min-max normalised per
image (USAD's choice), because Eq. 11 normalises it with validation statistics instead.
"""

from __future__ import annotations

import torch

from usad.core.ops import grid_side, resize_bilinear
from usad.models.usad.patchcore import PatchCore, nearest_bank_distance, training_subset


class StructuralModule:
    def __init__(self, cfg, device: torch.device, seed: int, key: str = "npgmf.structural", precision: str = "fp32"):
        self.cfg, self.device, self.seed = cfg, device, seed
        self.patchcore = PatchCore(cfg, device, seed, key=key)
        self.patchcore.backbone.precision = precision

    def subset(self, n_images: int) -> list[int]:
        """The training images that go into the bank (all of them at train_ratio 1)."""
        if self.cfg.train_ratio < 1:
            return training_subset(n_images, self.cfg.train_ratio, self.seed)
        return list(range(n_images))

    def fit(self, loader, n_images: int) -> None:
        """``loader`` yields the chosen training images at the structural size, in order."""
        self.patchcore.fit(loader, n_images)

    @property
    def bank(self) -> torch.Tensor:
        return self.patchcore.bank

    @bank.setter
    def bank(self, value: torch.Tensor) -> None:
        self.patchcore.bank = value.to(self.device)

    @torch.no_grad()
    def maps(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """(B, 3, s, s) at the structural size -> (B, size, size) Eq. 9-10 nearest-neighbour distance maps."""
        patches = self.patchcore.features(images).float()
        b, p, dim = patches.shape
        d, _ = nearest_bank_distance(patches.reshape(-1, dim), self.patchcore.bank)
        side = grid_side(p)
        return resize_bilinear(d.view(b, side, side), size)
