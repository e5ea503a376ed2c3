"""Batched map operations on tensors, each equal to the library call the authors use.

- ``resize_bilinear``  == OpenCV ``resize(INTER_LINEAR)`` when upsampling, and
  ``F.interpolate(bilinear, align_corners=False)``.
- ``resize_images``    == torchvision ``Resize`` on a tensor (bilinear, antialiased).
- ``gaussian_blur``    == SciPy ``gaussian_filter`` (mode ``"scipy"``) or
  OpenCV ``GaussianBlur`` (mode ``"opencv"``, BORDER_REFLECT_101).
- ``minmax_normalize`` per map, all-zero for a constant map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) images -> (B, C, size, size), as torchvision ``Resize`` on tensors."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_bilinear(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) maps -> (B, size, size), bilinear with half-pixel centres (cv2 INTER_LINEAR)."""
    if maps.shape[-2:] == (size, size):
        return maps
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-map (m - min) / (max - min); maps with max - min <= eps become all zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    span = hi - lo
    safe = torch.where(span > eps, span, torch.ones_like(span))
    return torch.where(span > eps, (maps - lo) / safe, torch.zeros_like(maps))


def _reflect_index(n: int, pad: int, mode: str, device) -> torch.Tensor:
    """Source indices of a length-``n`` axis padded by ``pad`` on both sides.

    ``"scipy"``: half-sample symmetric (d c b a | a b c d), SciPy's ``reflect``.
    ``"opencv"``: whole-sample (d c b | a b c d), OpenCV's BORDER_REFLECT_101.
    """
    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    if mode == "scipy":
        period = 2 * n
        m = idx.remainder(period)
        return torch.where(m >= n, period - 1 - m, m)
    if mode == "opencv":
        period = 2 * n - 2
        m = idx.remainder(period)
        return torch.where(m >= n, period - m, m)
    raise ValueError(f"unknown border mode {mode!r}")


def gaussian_kernel1d(sigma: float, radius: int, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(maps: torch.Tensor, sigma: float, radius: int | None = None, mode: str = "scipy") -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps.

    Defaults follow ``scipy.ndimage.gaussian_filter(sigma)``: radius
    ``int(4 * sigma + 0.5)``, half-sample symmetric border.
    """
    if radius is None:
        radius = int(4.0 * sigma + 0.5)
    b, h, w = maps.shape
    k = gaussian_kernel1d(sigma, radius, device=maps.device, dtype=maps.dtype)
    x = maps[:, None]
    x = x.index_select(3, _reflect_index(w, radius, mode, maps.device))
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = x.index_select(2, _reflect_index(h, radius, mode, maps.device))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def opencv_gaussian_blur(maps: torch.Tensor, ksize: int, sigma: float) -> torch.Tensor:
    """``cv2.GaussianBlur(m, (ksize, ksize), sigma)`` on each (H, W) map."""
    if ksize % 2 != 1:
        raise ValueError(f"Gaussian kernel size must be odd, got {ksize}")
    return gaussian_blur(maps, sigma, radius=ksize // 2, mode="opencv")


def grid_side(n_patches: int) -> int:
    """Side of a square patch grid; clear error for a non-square token count."""
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"{n_patches} patch tokens do not form a square grid; inputs must be square")
    return side
