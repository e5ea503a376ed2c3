"""Patch histogram (CSAD Sec. 3.3; AeCSAD Sec. III-E): class-area histograms of the segmentation and their distance
to the histograms of normal images.

A grid of square cells of side ``patch`` covers the segmentation map (``patch`` = the map size gives one cell: the
whole-image class histogram, Eq. 1). Cells start every ``patch`` pixels, plus one flush with the far edge when the
size is not a multiple (the code's patch extraction); they are ordered column by column. Each cell gives the share
of its pixels in each class 1..K (background, class 0, is left out, as in the code), and the cells' shares are
concatenated.

Distances to the normal histograms:
- ``mahalanobis`` (CSAD Eq. 4, the code's): mean and covariance (``np.cov``, N - 1) of the training histograms, the
  covariance inverted with the pseudo-inverse (cut-off 1e-15 of the largest singular value); a negative quadratic
  form (round-off) falls back to the Euclidean distance, as the code's NaN check does.
- ``layout`` (AeCSAD Eq. 3): (1/K) sum_k || H_k(Y_hat) - H_k(Y_ref) ||_2, where H_k is class k's share in every
  cell and the reference Y_ref is the mean over the training histograms.
"""

from __future__ import annotations

import torch

from usad.core.errors import UsadError

DISTANCES = ("mahalanobis", "layout")
PINV_RCOND = 1e-15  # numpy.linalg.pinv's default cut-off (the code's np.linalg.pinv(np.cov(...)))


class HistogramError(UsadError, ValueError):
    """Histograms that cannot be fitted or compared (too few images, wrong sizes)."""


def cell_offsets(size: int, patch: int) -> list[int]:
    """Start of each cell along one side: every ``patch`` pixels, plus one flush with the edge."""
    patch = min(patch, size)
    offsets = list(range(0, size - patch + 1, patch))
    if offsets[-1] != size - patch:
        offsets.append(size - patch)
    return offsets


def class_histograms(labels: torch.Tensor, num_classes: int, patch: int) -> torch.Tensor:
    """Eq. 1 per grid cell: (N, H, W) integer labels -> (N, cells * (K)) float64 class shares, classes 1..K."""
    if labels.dim() != 3:
        raise HistogramError(f"segmentation maps must be (N, H, W), got shape {tuple(labels.shape)}")
    n, h, w = labels.shape
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes)[..., 1:]  # (N, H, W, K), background dropped
    # integral image: the count of each class in any rectangle in O(1)
    integral = torch.nn.functional.pad(one_hot.to(torch.float64).cumsum(1).cumsum(2), (0, 0, 1, 0, 1, 0))
    ph, pw = min(patch, h), min(patch, w)
    cells = []
    for x in cell_offsets(w, patch):          # column by column, as the code's patch extraction
        for y in cell_offsets(h, patch):
            count = (integral[:, y + ph, x + pw] - integral[:, y, x + pw]
                     - integral[:, y + ph, x] + integral[:, y, x])
            cells.append(count / (ph * pw))
    return torch.stack(cells, 1).reshape(n, -1)


class HistogramGaussian:
    """Mean and pseudo-inverse covariance of normal histograms (Eq. 4), and the two distances."""

    def __init__(self, mean: torch.Tensor, inv_cov: torch.Tensor, num_cells: int):
        self.mean, self.inv_cov, self.num_cells = mean, inv_cov, num_cells

    @classmethod
    def fit(cls, hists: torch.Tensor, num_cells: int) -> "HistogramGaussian":
        hists = hists.to(torch.float64)
        if hists.shape[0] < 2:
            raise HistogramError(f"the patch histogram needs at least 2 normal training images, got {hists.shape[0]}")
        mean = hists.mean(0)
        centred = hists - mean
        cov = centred.T @ centred / (hists.shape[0] - 1)
        inv_cov = torch.linalg.pinv(cov, rtol=PINV_RCOND)
        return cls(mean, inv_cov, num_cells)

    def mahalanobis(self, hists: torch.Tensor) -> torch.Tensor:
        """Eq. 4; Euclidean where round-off makes the quadratic form negative (the code's NaN fallback)."""
        d = hists.to(torch.float64) - self.mean
        q = ((d @ self.inv_cov) * d).sum(-1)
        return torch.where(q >= 0, q.clamp_min(0).sqrt(), d.norm(dim=-1))

    def layout(self, hists: torch.Tensor) -> torch.Tensor:
        """AeCSAD Eq. 3: mean over classes of the L2 norm, over cells, of the share difference to the mean layout."""
        d = (hists.to(torch.float64) - self.mean).reshape(hists.shape[0], self.num_cells, -1)
        return d.norm(dim=1).mean(-1)

    def distance(self, hists: torch.Tensor, kind: str) -> torch.Tensor:
        if kind not in DISTANCES:
            raise HistogramError(f"unknown histogram distance {kind!r}; choose one of {DISTANCES}")
        return self.mahalanobis(hists) if kind == "mahalanobis" else self.layout(hists)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.mean": self.mean, f"{prefix}.inv_cov": self.inv_cov,
                f"{prefix}.num_cells": torch.tensor(self.num_cells)}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str) -> "HistogramGaussian":
        return cls(tensors[f"{prefix}.mean"], tensors[f"{prefix}.inv_cov"], int(tensors[f"{prefix}.num_cells"]))


class PatchHistogram:
    """One Gaussian per grid (``patches``, e.g. [256, 128]: the whole image and 2 x 2 cells), each with its distance.

    ``scores(labels)`` gives one column per grid; the branch score (trimmed z-scores summed, Sec. 3.5) is
    ``usad.models.csad.fusion``'s.
    """

    def __init__(self, num_classes: int, patches: list[int], distances: list[str]):
        if len(patches) != len(distances):
            raise HistogramError(f"histogram.patches {patches} and histogram.distances {distances} must have the "
                                 f"same length (one distance per grid)")
        for kind in distances:
            if kind not in DISTANCES:
                raise HistogramError(f"histogram.distances: unknown distance {kind!r}; choose from {DISTANCES}")
        self.num_classes, self.patches, self.distances = num_classes, list(patches), list(distances)
        self.gaussians: list[HistogramGaussian] = []

    def histograms(self, labels: torch.Tensor) -> list[torch.Tensor]:
        return [class_histograms(labels, self.num_classes, p) for p in self.patches]

    def fit(self, labels: torch.Tensor) -> "PatchHistogram":
        """``labels``: (N, H, W) segmentation maps of the normal training images."""
        h, w = labels.shape[1:]
        self.gaussians = [HistogramGaussian.fit(hist, len(cell_offsets(h, p)) * len(cell_offsets(w, p)))
                          for p, hist in zip(self.patches, self.histograms(labels))]
        return self

    def scores(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, grids) float64 distances of each image's histograms to the normal ones."""
        return torch.stack([g.distance(hist, kind) for g, hist, kind
                            in zip(self.gaussians, self.histograms(labels), self.distances)], 1)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"hist.num_classes": torch.tensor(self.num_classes)}
        for i, g in enumerate(self.gaussians):
            out.update(g.tensors(f"hist.{i}"))
        return out

    def load_tensors(self, tensors: dict) -> "PatchHistogram":
        self.num_classes = int(tensors["hist.num_classes"])
        self.gaussians = [HistogramGaussian.from_tensors(tensors, f"hist.{i}") for i in range(len(self.patches))]
        return self
