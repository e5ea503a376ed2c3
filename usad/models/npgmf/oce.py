"""RD4AD's one-class embedding (OCE, Deng & Li, CVPR 2022), NPGMF's bottleneck (Sec. III-A1).

Multi-scale feature fusion (MFF): the level-1 map passes two stride-2 3x3 convolutions, the
level-2 map one (each conv + BN + ReLU), so both reach level 3's size; the three are
concatenated and a stage of residual blocks, the first with stride 2, compresses them into the
one-class embedding at 1/32 of the image.

Channels follow the encoder's block expansion e (1 for ResNet-18/34, 4 for ResNet-50/101):
levels 64e, 128e, 256e; MFF outputs 256e + 256e + 256e; the embedding has 512e channels. The
residual blocks are the encoder's kind (torchvision's ``Bottleneck`` or ``BasicBlock``, as in
RD4AD, whose attention variants have their attention switched off). Checked against RD4AD's
``BN_layer`` by tests/models/npgmf/test_npgmf_golden.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
BASE_CHANNELS = 64   # ResNet level-1 width before the block expansion
STAGE_PLANES = 512   # ResNet's fourth stage: the embedding has STAGE_PLANES * expansion channels


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


def residual_stage(block, inplanes: int, planes: int, n_blocks: int, stride: int) -> nn.Sequential:
    """A ResNet stage whose first block maps ``inplanes`` to planes * expansion (1x1 conv + BN shortcut)."""
    out = planes * block.expansion
    shortcut = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
    blocks = [block(inplanes, planes, stride, shortcut)]
    blocks += [block(out, planes) for _ in range(1, n_blocks)]
    return nn.Sequential(*blocks)


class OneClassEmbedding(nn.Module):
    def __init__(self, block: str, n_blocks: int):
        super().__init__()
        kind = BLOCKS[block]
        c = BASE_CHANNELS * kind.expansion
        self.mff_level1 = nn.Sequential(conv_bn_relu(c, 2 * c, 2), conv_bn_relu(2 * c, 4 * c, 2))
        self.mff_level2 = conv_bn_relu(2 * c, 4 * c, 2)
        self.embed = residual_stage(kind, 3 * 4 * c, STAGE_PLANES, n_blocks, stride=2)
        self.out_channels = STAGE_PLANES * kind.expansion
        for m in self.modules():  # RD4AD's (and torchvision's) initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[f1, f2, f3] encoder maps -> (B, 512e, H/32, W/32) one-class embedding."""
        f1, f2, f3 = features
        fused = torch.cat([self.mff_level1(f1), self.mff_level2(f2), f3], dim=1)  # MFF
        return self.embed(fused)
