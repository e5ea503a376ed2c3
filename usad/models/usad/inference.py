"""USAD at test time (Sec. 4.5): every test image through the three fitted branches and their fusion."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from usad.core.backbones import resolve_device
from usad.core.data.checks import check_dataset
from usad.core.data.dataset import TestDataset, make_loader
from usad.core.errors import UsadError
from usad.core.paths import category_dir
from usad.models.usad.branches import BRANCHES, load_branches
from usad.models.usad.fusion import fuse, to_eval_size

log = logging.getLogger("usad")


def metric_device(cfg) -> torch.device | None:
    """Where the pixel metrics run: the configured GPU, or None (NumPy on the host, the reference path)."""
    device = resolve_device(cfg.device)
    return device if device.type == "cuda" else None


@dataclass
class Predictions:
    """Everything evaluation produces, per test image in evaluation order (maps at the evaluation size)."""

    files: list[str]
    label: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)   # s_obj, s_attr, s_pc, s_fused, s_M
    maps: dict[str, np.ndarray] = field(default_factory=dict)     # m_obj, m_attr, m_pc, m_fused
    mask: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)   # maclu_r, maclu_labels (tau sweeps)
    seconds: dict[str, float] = field(default_factory=dict)       # wall time per branch: its backbone, or its feature-cache reads when the cache is on


class NonFiniteError(UsadError):
    """A score or map came out NaN or infinite."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def branch_features(branches: dict, images: torch.Tensor, paths: list | None = None, cache=None,
                    fingerprints: dict | None = None, seconds: dict | None = None) -> dict[str, dict]:
    """Backbone features of a batch for every branch, from the feature cache when it has them."""
    feats = {}
    for name, branch in branches.items():
        t0 = time.perf_counter()
        cached = cache.load(name, fingerprints[name], paths) if cache is not None else None
        if cached is not None:
            feats[name] = {k: v.to(branch.device) for k, v in cached.items()}
        else:
            feats[name] = branch.extract(images)
            if cache is not None:
                cache.save(name, fingerprints[name], paths, feats[name])
        _sync(branch.device)
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return feats


def outputs_from_features(branches: dict, feats: dict, size: int, cfg, seconds: dict | None = None) -> dict[str, torch.Tensor]:
    """Branch scores and maps (at the evaluation size ``size``) and their fusion."""
    t0 = time.perf_counter()
    s_obj, r, labels = branches["maclu"].ratios(feats["maclu"])
    m_obj = branches["maclu"].map_from_ratios(r, labels)
    s_attr, m_attr = branches["ma2patch"].score(feats["ma2patch"])
    s_pc, m_pc = branches["patchcore"].score(feats["patchcore"])
    m_obj, m_attr, m_pc = (to_eval_size(m, size) for m in (m_obj, m_attr, m_pc))
    s_fused, m_fused, m_product = fuse(s_obj, s_pc, m_obj, m_attr, m_pc, cfg.fusion)
    if seconds is not None:
        _sync(m_fused.device)
        seconds["heads"] = seconds.get("heads", 0.0) + time.perf_counter() - t0
    return {"s_obj": s_obj, "s_attr": s_attr, "s_pc": s_pc, "s_fused": s_fused,
            "s_M": m_product.flatten(1).max(1).values,
            "m_obj": m_obj, "m_attr": m_attr, "m_pc": m_pc, "m_fused": m_fused,
            "maclu_r": r, "maclu_labels": labels}


def predict_batch(branches: dict, images: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """One batch of normalised eval-size images through the three branches and fusion."""
    return outputs_from_features(branches, branch_features(branches, images), images.shape[-1], cfg)


def check_finite(out: dict[str, torch.Tensor], files: list[str]) -> None:
    """Stop with the image and output that went NaN/inf (e.g. a broken checkpoint or a corrupt model file)."""
    for key, value in out.items():
        if value.is_floating_point():
            bad = ~torch.isfinite(value.flatten(1) if value.dim() > 1 else value[:, None]).all(1)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise NonFiniteError(f"{key} is NaN or infinite for test image {files[i]}: check the model files "
                                     f"and backbone weights (retrain the branch if its file was damaged)")


def make_cache(cfg):
    if not cfg.cache.dir:
        return None, None
    from usad.core.cache import FeatureCache, backbone_fingerprint
    fps = {b: backbone_fingerprint(cfg[b], cfg.data.eval_size) for b in BRANCHES}
    return FeatureCache(cfg.cache.dir, cfg.cache.dtype), fps


def evaluate(cfg, branches: dict | None = None, keep_branch_maps: bool = True, keep_ratios: bool = False,
             check: bool = True) -> Predictions:
    """Run every test image through the loaded branches and fusion (the test split checked first, unless
    ``check`` is off because the caller already ran the same ``check_dataset``)."""
    device = resolve_device(cfg.device)
    root = category_dir(cfg)
    if check:
        check_dataset(root, cfg.data.eval_size, splits=("test",))
    branches = branches or load_branches(cfg, device)
    dataset = TestDataset(root, cfg.data.eval_size)
    cache, fingerprints = make_cache(cfg)
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
        idx = batch["index"].numpy()
        paths = [dataset.samples[i].path for i in idx]
        feats = branch_features(branches, batch["image"].to(device, non_blocking=True), paths, cache, fingerprints, preds.seconds)
        out = outputs_from_features(branches, feats, size, cfg, preds.seconds)
        check_finite(out, [preds.files[i] for i in idx])
        for k, arr in (*preds.scores.items(), *preds.maps.items()):
            arr[idx] = out[k].float().cpu().numpy()
        if keep_ratios:
            for k in ("maclu_r", "maclu_labels"):
                value = out[k].cpu().numpy()
                preds.extras.setdefault(k, np.empty((n, *value.shape[1:]), value.dtype))[idx] = value
        preds.mask[idx] = batch["mask"].numpy().astype(np.uint8)
    if cache is not None:
        log.info("feature cache %s: %d hits, %d misses", cache.root, cache.hits, cache.misses)
    return preds
