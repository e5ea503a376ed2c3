"""One way to build, fit, save and load a USAD branch (Sec. 4.2-4.4), used by the training scripts,
``usad.run`` and ``usad.reproduce`` alike."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch.utils.data import Subset

from usad.core.artifacts import ArtifactError, check_writable, load_artifact
from usad.core.backbones import check_backbone, resolve_device
from usad.core.cli import seed_everything
from usad.core.config import add_config_args, config_from_args
from usad.core.data.checks import check_dataset
from usad.core.data.dataset import DatasetError, TrainDataset, holdout_split, make_loader, train_samples
from usad.core.paths import category_dir
from usad.models.usad.ma2patch import MA2Patch
from usad.models.usad.maclu import MACLU
from usad.models.usad.patchcore import PatchCore, training_subset

log = logging.getLogger("usad")

BRANCHES = ("maclu", "ma2patch", "patchcore")


def model_path(cfg, branch: str) -> Path:
    return Path(cfg.paths.models) / cfg.data.category / f"{branch}.pt"


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
    model.backbone.precision = cfg.precision  # fp32 | bf16 forward passes (usad.core.backbones.forward_precision)
    return model


def fit_branch(branch: str, cfg, device: torch.device | None = None, check: bool = True):
    """Fit one branch on the normal training images (checked first, unless ``check`` is off because the caller
    already ran the same ``check_dataset``, e.g. ``usad.experiments.run.check_inputs``); returns the fitted branch.
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
    """Fit one branch and save it to ``<paths.models>/<category>/<branch>.pt`` (the training scripts: always
    refitted); returns that path."""
    path = model_path(cfg, branch)
    check_writable(Path(cfg.paths.models), "paths.models")  # before the compute, not after it
    trained_branch(branch, cfg, resolve_device(cfg.device), retrain=True, path=path)
    return path


BRANCH_CLASSES = {"maclu": MACLU, "ma2patch": MA2Patch, "patchcore": PatchCore}


def expected_fit_config(branch: str, cfg) -> dict:
    """The fit config a model file of ``branch`` must record to be valid for ``cfg`` (see ``load_artifact``)."""
    return {**BRANCH_CLASSES[branch].fit_config_of(cfg[branch], cfg.seed), **run_fit_config(cfg)}


def saved_payload(branch: str, cfg, path: Path) -> tuple[dict | None, str]:
    """The content of ``path`` when it is a valid model of ``branch`` for this config, else (None, why not)."""
    if not path.is_file():
        return None, f"no model file at {path}"
    try:
        return load_artifact(path, branch, expected_fit_config(branch, cfg), BRANCH_CLASSES[branch].train_hint), ""
    except ArtifactError as e:
        return None, str(e)


def trained_branch(branch: str, cfg, device, retrain: bool = False, path: Path | None = None, check: bool = True):
    """The fitted branch: loaded from ``path`` (default: its model file) when that is valid for this
    config and ``retrain`` is off, else fitted and saved there (``check``: see ``fit_branch``). Returns
    (branch object, "loaded" | "trained")."""
    path = Path(path or model_path(cfg, branch))
    payload, why = (None, "--retrain") if retrain else saved_payload(branch, cfg, path)
    if payload is not None:
        log.info("%s: %s is valid for this config: not retrained (--retrain forces it)", branch, path)
        return build_branch(branch, cfg, device).load(path, payload), "loaded"
    if path.exists() and not retrain:
        log.warning("%s: retraining, the existing model file is not usable: %s", branch, why)
    model = fit_branch(branch, cfg, device, check=check)
    model.save(path)
    log.info("%s: saved %s", branch, path)
    return model, "trained"


def load_branches(cfg, device: torch.device) -> dict:
    """The three trained branches. Every model file is read and checked against the config first,
    so a missing or mismatched file is reported before any backbone is built or downloaded."""
    payloads = {b: load_artifact(model_path(cfg, b), b, expected_fit_config(b, cfg), BRANCH_CLASSES[b].train_hint)
                for b in BRANCHES}
    return {b: build_branch(b, cfg, device).load(model_path(cfg, b), payloads[b]) for b in BRANCHES}


def train_main(branch: str, doc: str):
    """The ``main(argv)`` of a training script: parse --config/--set, then ``train_branch``."""
    def main(argv=None) -> Path:
        parser = add_config_args(argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter))
        return train_branch(branch, config_from_args(parser.parse_args(argv)))

    return main
