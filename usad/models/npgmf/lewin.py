"""Uformer's LeWin transformer block (Wang et al., CVPR 2022), the fusion unit of NPGMF's decoder (Sec. III-A4).

A LeWin block on a (B, H*W, C) token map:

    x = x + W-MSA(LN(x))        window self-attention (win x win windows, optionally shifted by win/2),
                                with a learned relative position bias and, with ``modulator``, a learned
                                (win*win, C) embedding added to every window's tokens before attention;
    x = x + LeFF(LN(x))         Linear(C, rC) + GELU, depth-wise 3x3 conv (+ bias) + GELU on the
                                spatial map, Linear(rC, C).

As in Uformer: when the map is not larger than the window (min(H, W) <= win), the window is the
whole map and there is no shift; a shifted window attends only inside its region (the mask adds
``CROSS_REGION_BIAS`` to other pairs). ``LeWinStack`` runs ``depth`` blocks on a (B, C, H, W) map,
every second one shifted (Uformer's ``shift_flag``). Checked against Uformer's
``LeWinTransformerBlock`` and ``BasicUformerLayer`` by tests/models/npgmf/test_npgmf_golden.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

CROSS_REGION_BIAS = -100.0  # Uformer / Swin: attention bias between tokens of different shifted regions
BIAS_INIT_STD = 0.02        # Uformer / Swin: truncated-normal std of the relative position bias table


def window_geometry(height: int, width: int, win_size: int, shift: int) -> tuple[int, int]:
    """Uformer's rule: a map no larger than the window is one window, unshifted."""
    if min(height, width) <= win_size:
        return min(height, width), 0
    return win_size, shift


def to_windows(x: torch.Tensor, win: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, win * win, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win * win, c)


def from_windows(windows: torch.Tensor, win: int, height: int, width: int) -> torch.Tensor:
    """Inverse of ``to_windows``: (B * nW, win * win, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // win, width // win, win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def relative_position_index(win: int) -> torch.Tensor:
    """(win^2, win^2) index into the (2 win - 1)^2 bias table of each token pair's (dy, dx) offset."""
    coords = torch.stack(torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (win - 1)
    return rel[..., 0] * (2 * win - 1) + rel[..., 1]


def shifted_window_mask(height: int, width: int, win: int, shift: int) -> torch.Tensor:
    """(nW, win^2, win^2) additive mask: 0 within a region of the rolled map, CROSS_REGION_BIAS across."""
    labels = torch.zeros(1, height, width, 1)
    region = 0
    for rows in (slice(0, -win), slice(-win, -shift), slice(-shift, None)):
        for cols in (slice(0, -win), slice(-win, -shift), slice(-shift, None)):
            labels[:, rows, cols] = region
            region += 1
    windows = to_windows(labels, win)[..., 0]  # (nW, win^2)
    differ = windows[:, None, :] != windows[:, :, None]
    return torch.where(differ, CROSS_REGION_BIAS, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a relative position bias."""

    def __init__(self, dim: int, num_heads: int, win: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"LeWin dim {dim} is not a multiple of its {num_heads} heads")
        self.num_heads, self.win = num_heads, win
        self.scale = (dim // num_heads) ** -0.5
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * win - 1) ** 2, num_heads))
        trunc_normal_(self.bias_table, std=BIAS_INIT_STD)
        self.register_buffer("bias_index", relative_position_index(win), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C) window tokens; mask: (nW, N, N) or None."""
        bw, n, c = x.shape
        heads = self.num_heads
        q = self.query(x).view(bw, n, heads, c // heads).transpose(1, 2) * self.scale
        k, v = self.key_value(x).view(bw, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index.reshape(-1)].view(n, n, heads).permute(2, 0, 1)
        logits = q @ k.transpose(-2, -1) + bias[None]
        if mask is not None:
            n_windows = mask.shape[0]
            logits = (logits.view(bw // n_windows, n_windows, heads, n, n) + mask[None, :, None]).view(bw, heads, n, n)
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.out(out)


class LeFF(nn.Module):
    """Locally-enhanced feed-forward: expand, depth-wise 3x3 conv on the token map, reduce."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.expand = nn.Linear(dim, hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.reduce = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, _ = x.shape
        h = F.gelu(self.expand(x))
        h = h.transpose(1, 2).reshape(b, -1, height, width)
        h = F.gelu(self.depthwise(h)).flatten(2).transpose(1, 2)
        return self.reduce(h)


class LeWinBlock(nn.Module):
    """One LeWin block for an (H, W) token map (the window and shift follow ``window_geometry``)."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, win_size: int = 8, shift: int = 0,
                 mlp_ratio: float = 4.0, modulator: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.resolution = tuple(resolution)
        self.win, self.shift = window_geometry(*self.resolution, win_size, shift)
        if not 0 <= self.shift < self.win:
            raise ValueError(f"LeWin shift {self.shift} must be in [0, {self.win})")
        self.norm_attn = nn.LayerNorm(dim)
        self.attention = WindowAttention(dim, num_heads, self.win)
        self.modulator = nn.Parameter(torch.randn(self.win * self.win, dim)) if modulator else None
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = LeFF(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        h, w = self.resolution
        if h % self.win or w % self.win:
            raise ValueError(f"a {h} x {w} map does not split into {self.win} x {self.win} windows")
        mask = shifted_window_mask(h, w, self.win, self.shift) if self.shift else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H * W, C) tokens, row-major."""
        b, n, c = x.shape
        h, w = self.resolution
        shortcut = x
        x = self.norm_attn(x).view(b, h, w, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = to_windows(x, self.win)
        if self.modulator is not None:
            windows = windows + self.modulator
        mask = None if self.mask is None else self.mask.to(windows.dtype)
        x = from_windows(self.attention(windows, mask), self.win, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, n, c))
        return x + self.drop_path(self.ffn(self.norm_ffn(x), h, w))


class LeWinStack(nn.Module):
    """``depth`` LeWin blocks on a (B, C, H, W) map; odd blocks shifted by win/2 (Uformer's layer)."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, head_dim: int, win_size: int,
                 mlp_ratio: float, modulator: bool, drop_paths: list[float]):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"LeWin dim {dim} is not a multiple of head_dim {head_dim}")
        self.blocks = nn.ModuleList([
            LeWinBlock(dim, resolution, dim // head_dim, win_size, 0 if i % 2 == 0 else win_size // 2, mlp_ratio,
                       modulator, drop_paths[i])
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)
