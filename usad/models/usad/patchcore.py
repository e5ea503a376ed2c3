"""PatchCore: the texture branch (Sec. 4.4), Wide-ResNet50-2 layer2 + layer3 at 238.

Training: a seeded random half of the training images; every locally aware
patch feature of those images goes into a bank, which a greedy k-center
coreset (on sparse random projections) reduces to 1 %.
Inference: d_i = distance of patch i to its nearest bank vector; s* = max d_i,
re-weighted as the authors' code does; the map is the grid of d_i, min-max
normalised, bilinear to 238 and blurred.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from usad.core.artifacts import load_artifact, save_artifact
from usad.core.backbones import ResNetFeatures
from usad.core.config import plain
from usad.core.errors import UsadError
from usad.core.ops import gaussian_blur, grid_side, minmax_normalize, resize_bilinear, resize_images
from usad.core.sampler import GreedyCoresetSampler

log = logging.getLogger(__name__)


def training_subset(n_images: int, ratio: float, seed: int) -> list[int]:
    """The authors' subset: ``random.seed(seed); random.shuffle(idx); idx[:int(ratio * N)]`` (shuffled order)."""
    idx = list(range(n_images))
    random.Random(seed).shuffle(idx)
    return idx[: int(ratio * n_images)]


def locally_aware_features(f2: torch.Tensor, f3: torch.Tensor) -> torch.Tensor:
    """AvgPool2d(3, stride 1) on each map, adaptive average pooling to layer2's size, concatenated.

    (B, C2, H, W), (B, C3, H/2, W/2) -> (B, H * W, C2 + C3), patches in row-major order.
    """
    size = f2.shape[-2:]
    pooled = [F.adaptive_avg_pool2d(F.avg_pool2d(f, 3, stride=1), size) for f in (f2, f3)]
    return torch.cat(pooled, dim=1).flatten(2).transpose(1, 2)


def nearest_bank_distance(patches: torch.Tensor, bank: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of every (P, D) patch to its nearest bank vector, and that vector's index (bank chunked)."""
    best = torch.full((patches.shape[0],), float("inf"), device=patches.device)
    best_idx = torch.zeros(patches.shape[0], dtype=torch.long, device=patches.device)
    for start in range(0, bank.shape[0], chunk):
        d = torch.cdist(patches, bank[start:start + chunk].float())
        val, idx = d.min(dim=1)
        better = val < best
        best = torch.where(better, val, best)
        best_idx = torch.where(better, idx + start, best_idx)
    return best, best_idx


def reweighted_score(patches: torch.Tensor, d: torch.Tensor, nn_idx: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """The authors' re-weighting of s* for one image's (P, D) patches.

    m_test = most anomalous patch, m* = its nearest bank vector; n_j = the k - 1
    bank vectors nearest to m* after m* itself;
    w = 1 - exp(s*/sqrt(D)) / sum_j exp(||m_test - n_j|| / sqrt(D)); s = w s*.
    """
    s_star, i = d.max(dim=0)
    m_test = patches[i]
    m_star = bank[nn_idx[i]].float()
    knn = torch.cdist(m_star[None], bank.float()).topk(k, largest=False).indices[0, 1:]
    m_star_knn = torch.linalg.vector_norm(m_test[None] - bank[knn].float(), dim=1)
    sqrt_d = math.sqrt(patches.shape[1])
    w = 1 - torch.exp(s_star / sqrt_d) / torch.exp(m_star_knn / sqrt_d).sum()
    return w * s_star


class PatchCoreError(UsadError):
    """A PatchCore model that cannot score (e.g. a memory bank smaller than k)."""


class PatchCore:
    name = "patchcore"
    train_hint = "python train_pc.py"
    FIT_KEYS = ("backbone", "pretrained", "weights", "image_size", "train_ratio", "coreset_ratio",
                "projection_eps", "bank_dtype")

    def __init__(self, cfg, device: torch.device, seed: int, key: str = "patchcore"):
        self.cfg, self.device, self.seed = cfg, device, seed  # key: the config section, named in weight errors
        self.backbone = ResNetFeatures(cfg.backbone, cfg.pretrained, cfg.weights, key=key).to(device)
        self.bank = None
        self.train_indices: list[int] = []

    @classmethod
    def fit_config_of(cls, cfg, seed: int) -> dict:
        """The config values a model file must have been fitted with (the seed picks the subset and projection)."""
        return {**{k: plain(cfg[k]) for k in cls.FIT_KEYS}, "seed": seed}

    run_fit: dict = {}  # data.holdout_ratio, its seed and precision (pipeline.run_fit_config); recorded with the fit config

    def fit_config(self) -> dict:
        return {**self.fit_config_of(self.cfg, self.seed), **self.run_fit}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) at the branch size -> (B, P, D) patch features."""
        return locally_aware_features(*self.backbone(images.to(self.device, non_blocking=True)))

    def _allocate_bank(self, shape: tuple[int, int], dtype: torch.dtype) -> tuple[torch.Tensor, Path | None]:
        """The training bank: on the branch's device (a GPU bank never visits the host: the coreset's
        projection and greedy run there too), or in a memory-mapped file under ``bank_memmap`` (and that file)."""
        if not self.cfg.bank_memmap:
            return torch.empty(shape, dtype=dtype, device=self.device), None
        folder = Path(self.cfg.bank_memmap)
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="patchcore_bank.", suffix=".npy", dir=folder)
        os.close(fd)
        log.info("PatchCore: training bank memory-mapped in %s", name)
        np_dtype = np.float16 if dtype == torch.float16 else np.float32
        return torch.from_numpy(np.lib.format.open_memmap(name, mode="w+", dtype=np_dtype, shape=shape)), Path(name)

    def fit(self, loader, n_images: int, sampler=None) -> "PatchCore":
        """``loader`` yields the training subset (see ``training_subset``) in order."""
        dtype = getattr(torch, self.cfg.bank_dtype)  # float16 halves the memory (and rounds the features)
        bank, bank_file, row = None, None, 0  # one preallocated (n_images * P, D) bank, filled in place
        try:
            for images in tqdm(loader, desc="PatchCore features", unit="batch"):
                feats = self.features(images).float()
                flat = feats.reshape(-1, feats.shape[-1])
                if bank is None:
                    bank, bank_file = self._allocate_bank((n_images * feats.shape[1], feats.shape[2]), dtype)
                    log.info("PatchCore: bank of %d x %d %s (%.2f GB)", *bank.shape, self.cfg.bank_dtype,
                             bank.numel() * bank.element_size() / 1e9)
                bank[row:row + len(flat)] = flat  # device to device, or to the host memory map
                row += len(flat)
            if bank is None or row != bank.shape[0]:
                raise RuntimeError(f"expected {n_images} training images for PatchCore, got {row} patches")
            sampler = sampler or GreedyCoresetSampler(self.cfg.coreset_ratio, self.cfg.projection_eps, self.seed,
                                                      device=self.device)
            picks = sampler.run(bank)
            self.bank = bank[picks.to(bank.device)].to(self.device)  # a copy: independent of the (memory-mapped) bank
        finally:
            del bank
            if bank_file is not None:
                bank_file.unlink(missing_ok=True)
        log.info("PatchCore: coreset of %d patches", self.bank.shape[0])
        return self

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"patches": self.features(resize_images(images.to(self.device), self.cfg.image_size))}

    def score(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_pc (B,), M_pc (B, size, size))."""
        if self.bank.shape[0] < self.cfg.k_nearest:
            raise PatchCoreError(
                f"the PatchCore memory bank has {self.bank.shape[0]} vector(s), fewer than k_nearest = "
                f"{self.cfg.k_nearest}: retrain with more training images or a larger patchcore.coreset_ratio")
        patches = feats["patches"].float()
        b, p, dim = patches.shape
        d, nn_idx = nearest_bank_distance(patches.reshape(-1, dim), self.bank)
        d, nn_idx = d.view(b, p), nn_idx.view(b, p)
        s_pc = torch.stack([reweighted_score(patches[j], d[j], nn_idx[j], self.bank, self.cfg.k_nearest) for j in range(b)])
        side = grid_side(p)
        grid = minmax_normalize(d.view(b, side, side))
        return s_pc, gaussian_blur(resize_bilinear(grid, self.cfg.image_size), self.cfg.sigma)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(self.extract(images))

    def save(self, path) -> None:
        save_artifact(path, self.name, self.fit_config(), {"bank": self.bank},
                      {"train_indices": list(self.train_indices)})

    def load(self, path, payload: dict | None = None) -> "PatchCore":
        """Restore a saved model (``payload``: the file's content, already read and checked)."""
        payload = payload or load_artifact(path, self.name, self.fit_config(), self.train_hint)
        self.bank = payload["tensors"]["bank"].to(self.device)
        self.train_indices = list(payload["info"].get("train_indices", []))
        return self
