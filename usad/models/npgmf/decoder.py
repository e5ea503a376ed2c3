"""NPGMF's multi-semantic fusion decoder (Sec. III-A4): RD4AD's de-ResNet decoding blocks, fed through LeWin fusions.

De-ResNet (RD4AD): the encoder's residual stages mirrored. Each decoding stage doubles the map
size: its first block's strided convolution is a 2x2 transposed convolution with stride 2, and so
is its shortcut (+ BN). Stages output 256e, 128e and 64e channels (e: the block expansion).

The fusion, from the paper's text (Sec. III-A4; its formulas were lost in our copy):
- the one-class embedding z and the global prior g are concatenated and fused by LeWin blocks,
  then sent to the first decoding stage D1;
- each decoding stage's output r_k (the reconstruction of encoder level 4 - k), the prior g and
  the VQ features q of that same level are concatenated and fused by LeWin blocks; the result
  goes to the next decoding stage (the input width of a stage is the fused width);
- after the last stage, the fused map passes the image head: the reconstructed image.
So the reconstructions r_k used by the losses and by Eq. 7 are the decoding stages' outputs, as
in RD4AD. Checked against RD4AD's de-ResNet stages by tests/models/npgmf/test_npgmf_golden.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from usad.models.npgmf.lewin import BIAS_INIT_STD as LINEAR_INIT_STD, LeWinStack
from usad.models.npgmf.oce import BASE_CHANNELS, BLOCKS

STAGE_PLANES = (256, 128, 64)  # de-ResNet's decoding stages (outputs planes * expansion channels)


def upsample2x(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)


class DeBottleneck(nn.Module):
    """Bottleneck mirrored: 1x1, 3x3 (or 2x2 transposed with stride 2), 1x1, + shortcut, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = upsample2x(planes, planes) if stride == 2 else conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class DeBasicBlock(nn.Module):
    """BasicBlock mirrored: 3x3 (or 2x2 transposed with stride 2), 3x3, + shortcut, ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.conv1 = upsample2x(inplanes, planes) if stride == 2 else conv3x3(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


DE_BLOCKS = {"basic": DeBasicBlock, "bottleneck": DeBottleneck}


def decoding_stage(block: str, inplanes: int, planes: int, n_blocks: int) -> nn.Sequential:
    """A de-ResNet stage: ``inplanes`` at size s -> planes * expansion at size 2s."""
    kind = DE_BLOCKS[block]
    out = planes * kind.expansion
    shortcut = nn.Sequential(upsample2x(inplanes, out), nn.BatchNorm2d(out))
    return nn.Sequential(kind(inplanes, planes, 2, shortcut), *[kind(out, planes) for _ in range(1, n_blocks)])


class ImageHead(nn.Module):
    """Fused level-1 map (1/4 of the image) -> reconstructed image: 2x2 transposed convs (+ BN + ReLU), 3x3 conv."""

    def __init__(self, in_ch: int, channels: list[int], out_ch: int = 3):
        super().__init__()
        layers, c = [], in_ch
        for width in channels:
            layers += [upsample2x(c, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.Conv2d(c, out_ch, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def lewin_drop_paths(rate: float, depth: int, n_stacks: int) -> list[list[float]]:
    """Uformer's stochastic depth: rates rising linearly 0 -> ``rate`` over the blocks, in reverse for a decoder."""
    total = depth * n_stacks
    rates = [rate * i / max(total - 1, 1) for i in range(total)][::-1]
    return [rates[i * depth:(i + 1) * depth] for i in range(n_stacks)]


class FusionDecoder(nn.Module):
    """Fuse [z, g] -> D1 -> [r1, g, q3] -> D2 -> [r2, g, q2] -> D3 -> [r3, g, q1] -> image head."""

    def __init__(self, block: str, layers: list[int], prior_channels: int, code_channels: int, image_size: int, lewin,
                 image_head_channels: list[int]):
        super().__init__()
        e = BLOCKS[block].expansion
        level = [BASE_CHANNELS * e * m for m in (1, 2, 4)]            # encoder levels 1..3
        sizes = [image_size // s for s in (32, 16, 8, 4)]             # bottleneck, levels 3, 2, 1
        # fused widths: [z (512e), g], then [r_k, g, q] with r_k of encoder level 3, 2, 1
        widths = [8 * BASE_CHANNELS * e + prior_channels] + [level[2 - k] + prior_channels + code_channels
                                                              for k in range(3)]
        drops = lewin_drop_paths(lewin.drop_path, lewin.depth, len(widths))
        self.fusions = nn.ModuleList([
            LeWinStack(w, (s, s), lewin.depth, lewin.head_dim, lewin.win_size, lewin.mlp_ratio, lewin.modulator, d)
            for w, s, d in zip(widths, sizes, drops)])
        self.stages = nn.ModuleList([decoding_stage(block, widths[k], STAGE_PLANES[k], layers[k]) for k in range(3)])
        self.image_head = ImageHead(widths[3], list(image_head_channels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:  # RD4AD's initialisation of the convolutions
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):  # Uformer's initialisation of the LeWin projections
                trunc_normal_(m.weight, std=LINEAR_INIT_STD)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, prior: list[torch.Tensor], codes: list[torch.Tensor]):
        """z: embedding; prior: g broadcast to [bottleneck, level 3, 2, 1]; codes: [q1, q2, q3].

        Returns ([r1, r2, r3] reconstructions of encoder levels 1..3, reconstructed image).
        """
        x = self.fusions[0](torch.cat([z, prior[0]], dim=1))
        recon = []
        for k, stage in enumerate(self.stages):
            r = stage(x)
            recon.append(r)
            x = self.fusions[k + 1](torch.cat([r, prior[k + 1], codes[2 - k]], dim=1))
        return recon[::-1], self.image_head(x)
