"""Training and evaluation drivers shared by the scripts: data -> branches -> fusion -> metrics."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from .backbones import resolve_device
from .errors import UsadError
from .data.dataset import TestDataset, TrainDataset, make_loader, train_samples
from .fusion import fuse, to_eval_size
from .ma2patch import MA2Patch
from .maclu import MACLU
from .patchcore import PatchCore, training_subset

log = logging.getLogger("usad")

BRANCHES = ("maclu", "ma2patch", "patchcore")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def category_dir(cfg) -> Path:
    """The dataset folder; CoalAD is downloaded first when missing and ``data.download`` is on."""
    path = Path(cfg.data.root) / cfg.data.category
    if cfg.data.download and cfg.data.category == "coal_ad":
        from .data.coalad import download_coalad, is_complete
        if not is_complete(path):
            return download_coalad(cfg.data.root, cfg.data.category)
    return path


def model_path(cfg, branch: str) -> Path:
    return Path(cfg.paths.models) / cfg.data.category / f"{branch}.pt"


def results_dir(cfg) -> Path:
    return Path(cfg.paths.results) / cfg.data.category


def build_branch(branch: str, cfg, device: torch.device):
    if branch == "maclu":
        return MACLU(cfg.maclu, device)
    if branch == "ma2patch":
        return MA2Patch(cfg.ma2patch, device)
    if branch == "patchcore":
        return PatchCore(cfg.patchcore, device, cfg.seed)
    raise ValueError(f"unknown branch {branch!r}; one of {BRANCHES}")


def train_branch(branch: str, cfg) -> Path:
    """Fit one branch on the normal training images and save it; returns the model path."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    root = category_dir(cfg)
    samples = train_samples(root)
    model = build_branch(branch, cfg, device)
    size = cfg[branch].image_size
    dataset = TrainDataset(root, size, samples)
    if branch == "patchcore":
        model.train_indices = training_subset(len(samples), cfg.patchcore.train_ratio, cfg.seed)
        dataset = Subset(dataset, model.train_indices)
        log.info("PatchCore: %d of %d training images (train_ratio=%g, seed=%d)",
                 len(dataset), len(samples), cfg.patchcore.train_ratio, cfg.seed)
    loader = make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers, device)
    log.info("%s: fitting on %d images from %s at %d px on %s", branch, len(dataset), root, size, device)
    model.fit(loader, len(dataset))
    path = model_path(cfg, branch)
    model.save(path)
    log.info("%s: saved %s", branch, path)
    return path


def load_branches(cfg, device: torch.device) -> dict:
    return {b: build_branch(b, cfg, device).load(model_path(cfg, b)) for b in BRANCHES}


@dataclass
class Predictions:
    """Everything evaluation produces, per test image in evaluation order (maps at the evaluation size)."""

    files: list[str]
    label: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)   # s_obj, s_attr, s_pc, s_fused, s_M
    maps: dict[str, np.ndarray] = field(default_factory=dict)     # m_obj, m_attr, m_pc, m_fused
    mask: np.ndarray | None = None


def predict_batch(branches: dict, images: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """One batch of normalised eval-size images through the three branches and fusion."""
    size = images.shape[-1]
    s_obj, m_obj = branches["maclu"].predict(images)
    s_attr, m_attr = branches["ma2patch"].predict(images)
    s_pc, m_pc = branches["patchcore"].predict(images)
    m_obj, m_attr, m_pc = (to_eval_size(m, size) for m in (m_obj, m_attr, m_pc))
    s_fused, m_fused, m_product = fuse(s_obj, s_pc, m_obj, m_attr, m_pc, cfg.fusion)
    return {"s_obj": s_obj, "s_attr": s_attr, "s_pc": s_pc, "s_fused": s_fused,
            "s_M": m_product.flatten(1).max(1).values,
            "m_obj": m_obj, "m_attr": m_attr, "m_pc": m_pc, "m_fused": m_fused}


def evaluate(cfg, branches: dict | None = None, keep_branch_maps: bool = True) -> Predictions:
    """Run every test image through the loaded branches and fusion."""
    device = resolve_device(cfg.device)
    root = category_dir(cfg)
    branches = branches or load_branches(cfg, device)
    dataset = TestDataset(root, cfg.data.eval_size)
    n, size = len(dataset), cfg.data.eval_size
    map_keys = ("m_obj", "m_attr", "m_pc", "m_fused") if keep_branch_maps else ("m_fused",)
    preds = Predictions(
        files=[s.relative(root) for s in dataset.samples],
        label=np.array([s.label for s in dataset.samples], dtype=np.int64),
        scores={k: np.empty(n, np.float32) for k in ("s_obj", "s_attr", "s_pc", "s_fused", "s_M")},
        maps={k: np.empty((n, size, size), np.float32) for k in map_keys},
        mask=np.empty((n, size, size), np.uint8),
    )
    loader = make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers, device)
    for batch in tqdm(loader, desc="evaluate", unit="batch"):
        out = predict_batch(branches, batch["image"].to(device, non_blocking=True), cfg)
        idx = batch["index"].numpy()
        for k, arr in preds.scores.items():
            arr[idx] = out[k].float().cpu().numpy()
        for k, arr in preds.maps.items():
            arr[idx] = out[k].float().cpu().numpy()
        preds.mask[idx] = batch["mask"].numpy().astype(np.uint8)
    return preds


def run_cli(main, argv=None) -> int:
    """Run a script's ``main``; a UsadError becomes one clear message and exit status 2."""
    setup_logging()
    try:
        main(argv)
    except UsadError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: nothing half-written was kept (artifacts are written atomically)")
        return 130
    return 0
