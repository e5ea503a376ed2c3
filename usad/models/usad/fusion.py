"""Fusion of the three branches (Sec. 4.5).

M = M_obj * M_attr * M_pc (Hadamard product, Eq. 21) at the evaluation size;
s = lambda_obj s_obj + s_pc + lambda_M max(M) (Eq. 22-23), with max(M) taken
before the final 5 x 5 Gaussian blur of M.
"""

from __future__ import annotations

import torch

from usad.core.ops import opencv_gaussian_blur, resize_bilinear


def to_eval_size(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Branch maps to the evaluation size, bilinear (align_corners=False)."""
    return resize_bilinear(maps, size)


def hadamard(*maps: torch.Tensor) -> torch.Tensor:
    """Eq. 21: element-wise product of maps of equal size."""
    out = maps[0]
    for m in maps[1:]:
        out = out * m
    return out


def product_map(m_obj: torch.Tensor, m_attr: torch.Tensor, m_pc: torch.Tensor) -> torch.Tensor:
    """Eq. 21: M = M_obj * M_attr * M_pc, multiplied in the authors' order (obj, pc, attr)."""
    return hadamard(m_obj, m_pc, m_attr)


def fused_score(s_obj: torch.Tensor, s_pc: torch.Tensor, m_peak: torch.Tensor, lambda_obj: float, lambda_m: float) -> torch.Tensor:
    """Eq. 22-23: s = lambda_obj * s_obj + s_pc + lambda_M * max(M)."""
    return lambda_obj * s_obj + s_pc + lambda_m * m_peak


def final_blur(m: torch.Tensor, cfg) -> torch.Tensor:
    """The final OpenCV GaussianBlur(M, (5, 5), 1.0)."""
    return opencv_gaussian_blur(m, cfg.blur_ksize, cfg.blur_sigma)


def fuse(s_obj, s_pc, m_obj, m_attr, m_pc, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Branch outputs, maps already at the evaluation size -> (s_fused, M_fused, M before the blur)."""
    m = product_map(m_obj, m_attr, m_pc)
    s = fused_score(s_obj, s_pc, m.flatten(1).max(dim=1).values, cfg.lambda_obj, cfg.lambda_m)
    return s, final_blur(m, cfg), m
