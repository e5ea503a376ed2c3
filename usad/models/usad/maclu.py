"""MACLU: the object-level branch (Sec. 4.2), DINOv2 ViT-S/14 at 350 (25 x 25 patches).

Training (normal images only):
- a Gaussian of the CLS tokens (mu, Sigma, Sigma^-1), for the image score (Eq. 4);
- 2-cluster KMeans on every training patch token: belt vs coal. The
  foreground cluster is the one holding fewer training patches.
Inference:
- s_obj = Mahalanobis distance of the CLS token (Eq. 4);
- foreground-bias ratio r = d_bg / (d_fg + 1e-8) per patch (Eq. 6);
- mean replacement: r > tau takes the mean r of this image's background patches (Eq. 7);
- map: grid -> bilinear to the input size -> min-max -> Gaussian blur (Eq. 8).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.cluster import KMeans
from tqdm import tqdm

from usad.core.artifacts import load_artifact, save_artifact
from usad.core.backbones import ViTFeatures
from usad.core.config import ConfigError, plain
from usad.core.kmeans import kmeans
from usad.core.mahalanobis import GaussianAccumulator, mahalanobis
from usad.core.ops import gaussian_blur, grid_side, minmax_normalize, resize_bilinear, resize_images

log = logging.getLogger(__name__)

R_EPS = 1e-8  # Eq. 6 denominator guard of the authors' code


def foreground_bias_ratio(patches: torch.Tensor, centers: torch.Tensor, fg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: r = d_bg / (d_fg + 1e-8) and the nearest-centre label, for (B, N, D) patch tokens."""
    dist = torch.linalg.vector_norm(patches[:, :, None, :] - centers[None, None], dim=-1)  # (B, N, 2)
    r = dist[..., 1 - fg] / (dist[..., fg] + R_EPS)
    return r, dist.argmin(-1)


def mean_replacement(r: torch.Tensor, labels: torch.Tensor, fg: int, tau: float) -> torch.Tensor:
    """Eq. 7: in each image, every r > tau becomes the mean r of the patches labelled background."""
    background = labels != fg
    n_bg = background.sum(1, keepdim=True)
    mean_bg = (r * background).sum(1, keepdim=True) / n_bg.clamp_min(1)
    replace = (r > tau) & (n_bg > 0)
    return torch.where(replace, mean_bg.expand_as(r), r)


def ratio_map(r: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Eq. 8: (B, N) ratios -> (B, size, size): bilinear upsampling, min-max, Gaussian blur."""
    side = grid_side(r.shape[1])
    grid = r.reshape(-1, side, side)
    return gaussian_blur(minmax_normalize(resize_bilinear(grid, size)), sigma)


def object_map(r: torch.Tensor, labels: torch.Tensor, fg: int, tau: float, cfg) -> torch.Tensor:
    """M_obj at the branch size: mean replacement above ``tau`` (Eq. 7), then the map (Eq. 8); ``cfg``: the
    ``maclu`` section (image_size, sigma)."""
    return ratio_map(mean_replacement(r, labels, fg, tau), cfg.image_size, cfg.sigma)


class MACLU:
    name = "maclu"
    train_hint = "python train_ma_clu.py"
    FIT_KEYS = ("backbone", "pretrained", "weights", "model_kwargs", "image_size", "n_clusters", "kmeans_seed", "cov_eps")

    def __init__(self, cfg, device: torch.device):
        if cfg.n_clusters != 2:
            raise ConfigError(f"maclu.n_clusters = {cfg.n_clusters}: Eq. 6 needs exactly 2 clusters (belt and coal)")
        self.cfg, self.device = cfg, device
        self.backbone = ViTFeatures(cfg.backbone, cfg.image_size, cfg.pretrained, cfg.weights,
                                    cfg.model_kwargs, key="maclu").to(device)
        self.mu = self.inv_cov = self.centers = None
        self.fg = None

    @classmethod
    def fit_config_of(cls, cfg, seed: int | None = None) -> dict:
        """The config values a model file must have been fitted with."""
        return {k: plain(cfg[k]) for k in cls.FIT_KEYS}

    run_fit: dict = {}  # data.holdout_ratio, its seed and precision (pipeline.run_fit_config); recorded with the fit config

    def fit_config(self) -> dict:
        return {**self.fit_config_of(self.cfg), **self.run_fit}

    # ---------------------------------------------------------------- training
    def kmeans_on_device(self) -> bool:
        """``maclu.kmeans``: torch (on the branch's device, usad/kmeans.py) or scikit-learn (on the CPU);
        auto = torch on CUDA, where the patch bank then never leaves the GPU."""
        if self.cfg.kmeans == "auto":
            return self.device.type == "cuda"
        return self.cfg.kmeans == "torch"

    def fit(self, loader, n_images: int) -> "MACLU":
        """CLS Gaussian and KMeans from batches of training images at the branch size."""
        cls_stats = None
        patch_bank = None  # (n_images * N, D) float32, filled in place: KMeans reads it without a copy
        bank_device = self.device if self.kmeans_on_device() else torch.device("cpu")
        row = 0
        for images in tqdm(loader, desc="MACLU features", unit="batch"):
            cls, patches = self.backbone(images.to(self.device, non_blocking=True))
            if cls_stats is None:
                cls_stats = GaussianAccumulator(cls.shape[1], self.device)
                patch_bank = torch.empty((n_images * patches.shape[1], patches.shape[2]), dtype=torch.float32,
                                         device=bank_device)
            cls_stats.update(cls)
            flat = patches.reshape(-1, patches.shape[-1])
            patch_bank[row:row + len(flat)] = flat
            row += len(flat)
        if row != len(patch_bank):
            raise RuntimeError(f"expected {n_images} training images, the loader gave {row // patches.shape[1]}")
        self.mu, _, self.inv_cov = cls_stats.finalize(self.cfg.cov_eps, name="MACLU CLS tokens", eps_key="maclu.cov_eps")
        self.centers, labels = self.cluster(patch_bank)
        counts = torch.bincount(labels, minlength=self.cfg.n_clusters)
        self.fg = int(torch.argmin(counts))  # foreground (coal) = the smaller cluster
        log.info("MACLU: cluster sizes %s, foreground cluster %d", counts.tolist(), self.fg)
        return self

    def cluster(self, patch_bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KMeans of the (M, D) training patch tokens (Sec. 4.2): centres (k, D) on the device, labels (M,)."""
        torch_kmeans = self.kmeans_on_device()
        log.info("MACLU: KMeans(k=%d) on %d patch tokens of dim %d (%s on %s)", self.cfg.n_clusters, *patch_bank.shape,
                 "torch" if torch_kmeans else "scikit-learn", patch_bank.device)
        if torch_kmeans:
            result = kmeans(patch_bank, self.cfg.n_clusters, self.cfg.kmeans_seed)
            return result.centers.to(self.device), result.labels
        fitted = KMeans(n_clusters=self.cfg.n_clusters, n_init="auto", random_state=self.cfg.kmeans_seed).fit(patch_bank.numpy())
        return torch.from_numpy(fitted.cluster_centers_.astype(np.float32)).to(self.device), torch.from_numpy(fitted.labels_).long()

    # --------------------------------------------------------------- inference
    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features of normalised images of any square size (resized to the branch size)."""
        cls, patches = self.backbone(resize_images(images.to(self.device), self.cfg.image_size))
        return {"cls": cls, "patches": patches}

    def ratios(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """s_obj (Eq. 4) and, per patch, r (Eq. 6) and the nearest-centre label: all that tau acts on."""
        s_obj = mahalanobis(feats["cls"].float(), self.mu, self.inv_cov)
        r, labels = foreground_bias_ratio(feats["patches"].float(), self.centers, self.fg)
        return s_obj, r, labels

    def map_from_ratios(self, r: torch.Tensor, labels: torch.Tensor, tau: float | None = None) -> torch.Tensor:
        """Eq. 7-8: mean replacement above tau (default: the config's), then the map."""
        return object_map(r, labels, self.fg, self.cfg.tau if tau is None else tau, self.cfg)

    def score(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_obj (B,), M_obj (B, size, size)) from extracted features."""
        s_obj, r, labels = self.ratios(feats)
        return s_obj, self.map_from_ratios(r, labels)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(self.extract(images))

    # -------------------------------------------------------------- artifacts
    def save(self, path) -> None:
        save_artifact(path, self.name, self.fit_config(),
                      {"mu": self.mu, "inv_cov": self.inv_cov, "centers": self.centers},
                      {"fg_cluster": self.fg})

    def load(self, path, payload: dict | None = None) -> "MACLU":
        """Restore a saved model (``payload``: the file's content, already read and checked)."""
        payload = payload or load_artifact(path, self.name, self.fit_config(), self.train_hint)
        t = payload["tensors"]
        self.mu, self.inv_cov, self.centers = (t[k].to(self.device) for k in ("mu", "inv_cov", "centers"))
        self.fg = int(payload["info"]["fg_cluster"])
        return self
