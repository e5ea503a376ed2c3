"""NPGMF's normal multi-level codebooks (Sec. III-A3): vector quantisation as in VQ-VAE (van den Oord et al., 2017).

Each level has a learnable codebook E = {e_1 .. e_K} (K = 16). Every feature vector z_ij of the
atrous block's output is replaced by its nearest code (Eq. 1):

    q_ij = e_k,  k = argmin_j || z_ij - e_j ||_2

The lookup has no gradient; the straight-through estimator copies the gradient of q to z
(q_st = z + sg[q - z]: the value of q, the gradient of z). The codebook objective (Eq. 2):

    L_vq = || sg[z] - e ||^2 + beta || z - sg[e] ||^2

the codebook term moves the codes towards the features, the commitment term (weight beta) keeps
the features near their codes. Both squared norms are averaged over elements (VQ-VAE's code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Quantised:
    codes: torch.Tensor          # (B, C, H, W) straight-through quantised features (value of q, gradient of z)
    indices: torch.Tensor        # (B, H, W) index of each vector's nearest code
    codebook_loss: torch.Tensor  # || sg[z] - e ||^2 (mean)
    commitment_loss: torch.Tensor  # || z - sg[e] ||^2 (mean)
    loss: torch.Tensor           # Eq. 2: codebook_loss + beta * commitment_loss


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Eq. 1: index of the nearest codebook row (L2) for each of the (N, C) vectors; ties go to the lower index."""
    d = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t() + codebook.pow(2).sum(1)[None])
    return d.argmin(dim=1)


class VectorQuantiser(nn.Module):
    def __init__(self, n_codes: int, dim: int, beta: float):
        super().__init__()
        self.beta = beta
        self.codebook = nn.Parameter(torch.empty(n_codes, dim).uniform_(-1.0 / n_codes, 1.0 / n_codes))  # VQ-VAE init

    def forward(self, z: torch.Tensor) -> Quantised:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        with torch.no_grad():
            idx = nearest_code(flat, self.codebook)
        q = self.codebook[idx].view(b, h, w, c).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(q, z.detach())
        commitment_loss = F.mse_loss(z, q.detach())
        codes = z + (q - z).detach()  # straight-through estimator
        return Quantised(codes, idx.view(b, h, w), codebook_loss, commitment_loss,
                         codebook_loss + self.beta * commitment_loss)
