"""NPGMF's anomaly score (Sec. III-C, Eq. 11): the two maps z-normalised with validation statistics, weighted, smoothed.

    M = w_s (M_s - mu_s) / sigma_s + w_l (M_l - mu_l) / sigma_l,   then a Gaussian filter

mu and sigma: mean and standard deviation of all pixel scores of that map on the validation
images (normal images never used for fitting; never the test set). The image score is the
maximum of the smoothed map. With one branch (Table V's single-branch rows) the map is that
branch's normalised map, smoothed the same way.

The weights are 1 and 3; which branch gets 3 is not recoverable from the text (its symbols were
lost). From Table V we give 3 to the structural map: on MVTec AD the fused pixel AUROC (0.983) is
exactly the structural branch's (0.983, logical 0.971), i.e. the fused map ranks pixels as the
structural map does, and on MVTec LOCO the fused sPRO (0.758) lies nearer the structural
branch's (0.680) than the logical's (0.622). Both weights are config keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from usad.core.ops import gaussian_blur

MIN_STD = 1e-12  # a constant validation map has no spread: divide by this instead of 0


@dataclass
class PixelStats:
    """Running mean and standard deviation of every pixel score seen (float64 sums)."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, maps: torch.Tensor) -> None:
        m = maps.detach().double()
        self.n += m.numel()
        self.total += float(m.sum())
        self.squares += float((m * m).sum())

    def mean_std(self) -> tuple[float, float]:
        mean = self.total / self.n
        var = max(self.squares / self.n - mean * mean, 0.0)
        return mean, max(var ** 0.5, MIN_STD)


def normalise(maps: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """One term of Eq. 11: (M - mu) / sigma."""
    return (maps - mean) / std


def fuse(normalised: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Eq. 11: weighted sum of the normalised maps of the branches present."""
    return sum(weights[name] * m for name, m in normalised.items())


def smooth_and_score(fused: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian filter (SciPy's gaussian_filter, as RD4AD) and the image score = max of the smoothed map."""
    smoothed = gaussian_blur(fused, sigma) if sigma > 0 else fused
    return smoothed.flatten(1).max(dim=1).values, smoothed
