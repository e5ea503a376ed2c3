"""The atrous convolution block that feeds each level's codebook (Sec. III-A3, Fig. 3).

The paper shows the block only in a figure; this is DeepLabv3's ASPP without image pooling, the
usual atrous block: parallel branches (a 1x1 conv and one 3x3 conv per rate in ``rates``, each
+ BN + ReLU) see the map at several dilations; their concatenation is projected back by a 1x1
conv + BN + ReLU. Each branch has out_channels // n_branches channels. Map size is kept.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def branch(in_ch: int, out_ch: int, rate: int | None) -> nn.Sequential:
    """1x1 conv (rate None) or 3x3 conv with dilation ``rate`` (padding = rate keeps the size), + BN + ReLU."""
    conv = (nn.Conv2d(in_ch, out_ch, 1, bias=False) if rate is None
            else nn.Conv2d(in_ch, out_ch, 3, padding=rate, dilation=rate, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class AtrousBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, rates: list[int]):
        super().__init__()
        n = len(rates) + 1
        width = max(1, out_channels // n)
        self.branches = nn.ModuleList([branch(in_channels, width, None)]
                                      + [branch(in_channels, width, r) for r in rates])
        self.project = branch(n * width, out_channels, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))
