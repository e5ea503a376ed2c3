"""NPGMF's training objective (Sec. III-A5, Eq. 3-6) and its logical anomaly map (Eq. 7).

Eq. 3-4, feature reconstruction: for each level k the cosine distance between the encoder's map
f_k and its reconstruction r_k, each flattened to one vector per image (RD4AD's loss; the
paper's formulas were lost in our copy, RD4AD's code decides), averaged over the batch, summed
over levels. Eq. 5, image reconstruction: mean squared error between the (normalised) input and
the reconstructed image. Eq. 6: L = w_feat L_feat + w_img L_img + w_vq L_vq, all weights 1
(paper), with L_vq the sum over levels of Eq. 2 (usad.models.npgmf.vq).

Eq. 7, logical map: sum over levels of the per-pixel cosine distance 1 - cos(f_k, r_k), each
up-sampled bilinearly to the image size (RD4AD: align_corners=True).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_loss(features: list[torch.Tensor], recon: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 3-4: sum_k mean_b (1 - cos(vec f_k, vec r_k))."""
    return sum((1 - F.cosine_similarity(f.flatten(1), r.flatten(1), dim=1)).mean() for f, r in zip(features, recon))


def image_loss(image: torch.Tensor, recon_image: torch.Tensor) -> torch.Tensor:
    """Eq. 5: MSE between the input and the reconstructed image."""
    return F.mse_loss(recon_image, image)


def total_loss(l_feat: torch.Tensor, l_img: torch.Tensor, l_vq: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Eq. 6: weighted sum (weights for feature, image and VQ terms)."""
    w_feat, w_img, w_vq = weights
    return w_feat * l_feat + w_img * l_img + w_vq * l_vq


def level_maps(features: list[torch.Tensor], recon: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per level: (B, h_k, w_k) cosine distance 1 - cos(f_k, r_k) over channels."""
    return [1 - F.cosine_similarity(f, r, dim=1) for f, r in zip(features, recon)]


def logical_map(features: list[torch.Tensor], recon: list[torch.Tensor], size: int) -> torch.Tensor:
    """Eq. 7: (B, size, size) sum of the level maps up-sampled bilinearly (align_corners=True, as RD4AD)."""
    return sum(F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
               for m in level_maps(features, recon))
