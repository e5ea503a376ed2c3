"""MA2Patch: the semantic attribution branch (Sec. 4.3), DINOv2 ViT-B/14 at 406 (29 x 29 patches).

Training: g = mean of an image's patch tokens (Eq. 10); a Gaussian of the g of
the normal images (Eq. 11). Inference: s_attr = D_M(g) (Eq. 12); removing patch
i gives g_-i = (N g - p_i) / (N - 1) in closed form (Eq. 13), all N at once;
its contribution is c_i = |D_M(g) - D_M(g_-i)| (Eq. 14); the map is the grid
of c_i, bilinear to 406 and blurred, not normalised (Eq. 15).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from usad.core.artifacts import load_artifact, save_artifact
from usad.core.backbones import ViTFeatures
from usad.core.config import plain
from usad.core.mahalanobis import GaussianAccumulator, mahalanobis
from usad.core.ops import gaussian_blur, grid_side, resize_bilinear, resize_images


def global_descriptor(patches: torch.Tensor) -> torch.Tensor:
    """Eq. 10: g = mean of the patch tokens, (B, N, D) -> (B, D)."""
    return patches.mean(dim=1)


def ablated_descriptors(patches: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. 13: g_-i = (N g - p_i) / (N - 1) for every patch i at once -> (B, N, D)."""
    n = patches.shape[1]
    return (n * g[:, None, :] - patches) / (n - 1)


def patch_contributions(patches: torch.Tensor, mu: torch.Tensor, inv_cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 12 and 14: s_attr = D_M(g) and c_i = |D_M(g) - D_M(g_-i)|."""
    g = global_descriptor(patches)
    s_attr = mahalanobis(g, mu, inv_cov)
    c = (s_attr[:, None] - mahalanobis(ablated_descriptors(patches, g), mu, inv_cov)).abs()
    return s_attr, c


def attribution_map(c: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Eq. 15: (B, N) contributions -> (B, size, size), bilinear then Gaussian blur (no normalisation)."""
    side = grid_side(c.shape[1])
    return gaussian_blur(resize_bilinear(c.reshape(-1, side, side), size), sigma)


class MA2Patch:
    name = "ma2patch"
    train_hint = "python train_ma2patch.py"
    FIT_KEYS = ("backbone", "pretrained", "weights", "model_kwargs", "image_size", "cov_eps")

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.backbone = ViTFeatures(cfg.backbone, cfg.image_size, cfg.pretrained, cfg.weights,
                                    cfg.model_kwargs, key="ma2patch").to(device)
        self.mu = self.inv_cov = None

    @classmethod
    def fit_config_of(cls, cfg, seed: int | None = None) -> dict:
        """The config values a model file must have been fitted with."""
        return {k: plain(cfg[k]) for k in cls.FIT_KEYS}

    run_fit: dict = {}  # data.holdout_ratio, its seed and precision (pipeline.run_fit_config); recorded with the fit config

    def fit_config(self) -> dict:
        return {**self.fit_config_of(self.cfg), **self.run_fit}

    def fit(self, loader, n_images: int | None = None) -> "MA2Patch":
        """Eq. 11: Gaussian of the mean-pooled patch tokens, streamed over batches."""
        stats = None
        for images in tqdm(loader, desc="MA2Patch features", unit="batch"):
            _, patches = self.backbone(images.to(self.device, non_blocking=True))
            g = global_descriptor(patches.float())
            stats = stats or GaussianAccumulator(g.shape[1], self.device)
            stats.update(g)
        self.mu, _, self.inv_cov = stats.finalize(self.cfg.cov_eps, name="MA2Patch global descriptors", eps_key="ma2patch.cov_eps")
        return self

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        _, patches = self.backbone(resize_images(images.to(self.device), self.cfg.image_size))
        return {"patches": patches}

    def score(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_attr (B,), M_attr (B, size, size))."""
        s_attr, c = patch_contributions(feats["patches"].float(), self.mu, self.inv_cov)
        return s_attr, attribution_map(c, self.cfg.image_size, self.cfg.sigma)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(self.extract(images))

    def save(self, path) -> None:
        save_artifact(path, self.name, self.fit_config(), {"mu": self.mu, "inv_cov": self.inv_cov})

    def load(self, path, payload: dict | None = None) -> "MA2Patch":
        """Restore a saved model (``payload``: the file's content, already read and checked)."""
        t = (payload or load_artifact(path, self.name, self.fit_config(), self.train_hint))["tensors"]
        self.mu, self.inv_cov = t["mu"].to(self.device), t["inv_cov"].to(self.device)
        return self
