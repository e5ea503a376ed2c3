"""Multivariate Gaussian of normal features and the Mahalanobis distance (Eq. 4).

Statistics are accumulated from running sums (float64), so training features
stream through in batches and are never all held at once. As in the authors'
code: Sigma = centered^T centered / (K - 1) and Sigma^-1 = inv(Sigma + eps I)
computed in float32.
"""

from __future__ import annotations

import logging

import torch

from usad.core.errors import UsadError

log = logging.getLogger(__name__)


class GaussianAccumulator:
    """Running count, sum and sum of outer products of feature vectors."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        x = x.to(self.sum.device, torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def finalize(self, eps: float, name: str = "features", eps_key: str = "cov_eps") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, Sigma, Sigma^-1) in float32; ``eps_key`` is the config key of ``eps``, named in errors."""
        if self.n < 2:
            raise UsadError(f"{name}: a covariance needs at least 2 training images, got {self.n}; add normal images")
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        dim = cov.shape[0]
        if self.n <= dim:
            log.warning("%s: %d training images for %d feature dimensions: the covariance is singular, "
                        "only the %s=%g ridge keeps it invertible (scores stay finite but less reliable)",
                        name, self.n, dim, eps_key, eps)
        cov32 = cov.float()
        try:
            inv = torch.linalg.inv(cov32 + eps * torch.eye(dim, dtype=torch.float32, device=cov.device))
        except torch.linalg.LinAlgError as e:  # eps too small to lift a singular covariance in float32
            raise UsadError(f"{name}: the covariance plus {eps_key}={eps:g} is not invertible ({str(e).splitlines()[0]}); "
                            f"set a larger {eps_key} (the paper's 1e-6 suffices with features of a real backbone), "
                            f"or train on more images") from None
        if not torch.isfinite(inv).all():
            raise UsadError(f"{name}: the inverse of the covariance plus {eps_key}={eps:g} is not finite; set a "
                            f"larger {eps_key}, or train on more images")
        return mu.float(), cov32, inv


def mahalanobis(x: torch.Tensor, mu: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
    """Eq. 4: sqrt(max((x - mu)^T Sigma^-1 (x - mu), 0) + 1e-12) over the last axis."""
    d = x - mu
    q = ((d @ inv_cov) * d).sum(-1)
    return torch.sqrt(q.clamp_min(0) + 1e-12)
