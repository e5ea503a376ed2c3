"""NPGMF's frozen encoder (Sec. III-A1): an ImageNet ResNet (ResNet-101 in the paper), levels 1..3.

Built by the project's ``ResNetFeatures`` (usad.core.backbones): torchvision ImageNet weights, or a
local checkpoint (``weights``), with one clear error naming the config key when a file is missing
or does not fit; random weights only when asked for (``pretrained: false``, loud warning).
Returns the outputs of layer1, layer2 and layer3 (1/4, 1/8 and 1/16 of the image), as RD4AD's
encoder does.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from usad.core.backbones import ResNetFeatures, forward_precision


class ResNetEncoder(nn.Module):
    precision = "fp32"

    def __init__(self, name: str, pretrained: bool, weights: str | None, key: str):
        super().__init__()
        features = ResNetFeatures(name, pretrained, weights, key=key)
        self.stem, self.layer1 = features.stem[:-1], features.stem[-1]
        self.layer2, self.layer3 = features.layer2, features.layer3
        self.block = "bottleneck" if type(self.layer1[0]).expansion == 4 else "basic"
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetEncoder":
        return super().train(False)  # frozen: BatchNorm keeps its ImageNet statistics

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with forward_precision(x, self.precision):
            f1 = self.layer1(self.stem(x))
            f2 = self.layer2(f1)
            f3 = self.layer3(f2)
        return [f1.float(), f2.float(), f3.float()]
