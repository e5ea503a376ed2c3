"""Training and evaluation drivers shared by the scripts: data -> branches -> fusion -> metrics."""

from __future__ import annotations

import argparse
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from .artifacts import check_writable, load_artifact
from .backbones import check_backbone, resolve_device
from .config import add_config_args, config_from_args
from .data.checks import check_dataset
from .data.dataset import DatasetError, TestDataset, TrainDataset, holdout_split, make_loader, train_samples
from .errors import UsadError
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
        from .data.coalad import download_coalad
        return download_coalad(cfg.data.root, cfg.data.category)  # returns at once when already complete
    return path


def model_path(cfg, branch: str) -> Path:
    return Path(cfg.paths.models) / cfg.data.category / f"{branch}.pt"


def results_dir(cfg) -> Path:
    return Path(cfg.paths.results) / cfg.data.category


def holdout_fit_config(cfg) -> dict:
    """What every model file records of ``data.holdout_ratio``: the share of train/good kept out of fitting and
    the seed that picked it (None without a holdout, where the seed does not change the training set)."""
    ratio = cfg.data.holdout_ratio
    return {"data.holdout_ratio": ratio, "data.holdout_seed": cfg.seed if ratio > 0 else None}


def run_fit_config(cfg) -> dict:
    """The top-level config values every model file records besides its branch's section: the holdout
    (``holdout_fit_config``) and ``precision``, since bf16 forward passes change the features that the
    Gaussians, the clusters and the coreset are fitted on (README, "Speed and memory")."""
    return {**holdout_fit_config(cfg), "precision": cfg.precision}


def metric_device(cfg) -> torch.device | None:
    """Where the pixel metrics run: the configured GPU, or None (NumPy on the host, the reference path)."""
    device = resolve_device(cfg.device)
    return device if device.type == "cuda" else None


def build_branch(branch: str, cfg, device: torch.device):
    """A branch with its backbone, not fitted. Seeded first, so that a backbone with random weights (smoke runs,
    tests) comes out the same when it is fitted and each time it is loaded."""
    seed_everything(cfg.seed)
    if branch == "maclu":
        model = MACLU(cfg.maclu, device)
    elif branch == "ma2patch":
        model = MA2Patch(cfg.ma2patch, device)
    elif branch == "patchcore":
        model = PatchCore(cfg.patchcore, device, cfg.seed)
    else:
        raise ValueError(f"unknown branch {branch!r}; one of {BRANCHES}")
    model.run_fit = run_fit_config(cfg)  # recorded with the branch's fit config
    model.backbone.precision = cfg.precision  # fp32 | bf16 forward passes (usad.backbones.forward_precision)
    return model


def fit_branch(branch: str, cfg, device: torch.device | None = None, check: bool = True):
    """Fit one branch on the normal training images (checked first, unless ``check`` is off because the caller
    already ran the same ``check_dataset``, e.g. ``usad.run.check_inputs``); returns the fitted branch.
    Seeded by ``build_branch``, before the backbone and everything after it."""
    device = device or resolve_device(cfg.device)
    check_backbone(cfg[branch], branch)  # name, model_kwargs, image size: before any download
    root = category_dir(cfg)
    if check:
        check_dataset(root, splits=("train",))  # decodes every image: once per process is enough
    samples, held_out = holdout_split(train_samples(root), cfg.data.holdout_ratio, cfg.seed)
    if held_out:
        log.info("%s: %d of %d training images held out of fitting for calibration (data.holdout_ratio=%g, seed=%d)",
                 branch, len(held_out), len(samples) + len(held_out), cfg.data.holdout_ratio, cfg.seed)
    model = build_branch(branch, cfg, device)
    size = cfg[branch].image_size
    dataset = TrainDataset(root, size, samples)
    if branch == "patchcore":
        model.train_indices = training_subset(len(samples), cfg.patchcore.train_ratio, cfg.seed)
        if not model.train_indices:
            raise DatasetError(f"patchcore.train_ratio = {cfg.patchcore.train_ratio} of {len(samples)} training images "
                               f"selects none: use more images or a larger ratio")
        dataset = Subset(dataset, model.train_indices)
        log.info("PatchCore: %d of %d training images (train_ratio=%g, seed=%d)",
                 len(dataset), len(samples), cfg.patchcore.train_ratio, cfg.seed)
    loader = make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers, device)
    log.info("%s: fitting on %d images from %s at %d px on %s", branch, len(dataset), root, size, device)
    return model.fit(loader, len(dataset))


def train_branch(branch: str, cfg) -> Path:
    """Fit one branch and save it to ``<paths.models>/<category>/<branch>.pt``; returns that path."""
    path = model_path(cfg, branch)
    check_writable(Path(cfg.paths.models), "paths.models")  # before the compute, not after it
    model = fit_branch(branch, cfg)
    model.save(path)
    log.info("%s: saved %s", branch, path)
    return path


BRANCH_CLASSES = {"maclu": MACLU, "ma2patch": MA2Patch, "patchcore": PatchCore}


def expected_fit_config(branch: str, cfg) -> dict:
    """The fit config a model file of ``branch`` must record to be valid for ``cfg`` (see ``load_artifact``)."""
    return {**BRANCH_CLASSES[branch].fit_config_of(cfg[branch], cfg.seed), **run_fit_config(cfg)}


def load_branches(cfg, device: torch.device) -> dict:
    """The three trained branches. Every model file is read and checked against the config first,
    so a missing or mismatched file is reported before any backbone is built or downloaded."""
    payloads = {b: load_artifact(model_path(cfg, b), b, expected_fit_config(b, cfg), BRANCH_CLASSES[b].train_hint)
                for b in BRANCHES}
    return {b: build_branch(b, cfg, device).load(model_path(cfg, b), payloads[b]) for b in BRANCHES}


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
    from .cache import FeatureCache, backbone_fingerprint
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


def train_main(branch: str, doc: str):
    """The ``main(argv)`` of a training script: parse --config/--set, then ``train_branch``."""
    def main(argv=None) -> Path:
        parser = add_config_args(argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter))
        return train_branch(branch, config_from_args(parser.parse_args(argv)))

    return main


def run_cli(main, argv=None) -> int:
    """Run a script's ``main``; a UsadError becomes one clear message and exit status 2."""
    setup_logging()
    try:
        rc = main(argv)
    except UsadError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: nothing half-written was kept (artifacts are written atomically)")
        return 130
    return rc if isinstance(rc, int) else 0
