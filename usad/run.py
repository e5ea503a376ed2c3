"""The whole run in one process: the three trainings and the evaluation (``python -m usad.run``).

    python -m usad.run --config configs/coalad.yaml [--set KEY=VALUE ...] [--retrain]
                       [--save-predictions FILE.npz] [--heatmaps N|all] [--panels N|all] [--ablation]

Does what ``train_ma_clu.py``, ``train_ma2patch.py``, ``train_pc.py`` and
``test_fusion.py`` do, with the same options and outputs, but pays the start-up
(imports, device set-up) once and builds each backbone once: a branch fitted
here is evaluated as it is, without being read back from its file.

A branch whose model file is already there and valid for this config (it loads,
its checksum holds, and it was fitted with this config's values of that branch:
see ``usad.artifacts``) is loaded instead of retrained; ``--retrain`` retrains
all three. A file fitted with another config, or damaged, is retrained and
overwritten, with a warning that says why. The file records the config it was
fitted with, not the training images: after changing the images in place, pass
``--retrain``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .artifacts import ArtifactError, check_writable, load_artifact
from .backbones import check_backbone, resolve_device
from .config import add_config_args, config_from_args
from .data.checks import check_dataset
from .evaluation import add_evaluation_args, report_predictions
from .pipeline import (BRANCH_CLASSES, BRANCHES, build_branch, category_dir, evaluate, expected_fit_config, fit_branch,
                       model_path, run_cli)

log = logging.getLogger("usad")


@contextmanager
def step(name: str):
    """Log one line when a step ends: its name and wall time."""
    t0 = time.perf_counter()
    yield
    log.info("step %s: %.1f s", name, time.perf_counter() - t0)


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


def check_inputs(cfg) -> None:
    """Everything that can be checked before any compute: backbones, both splits, the output folders."""
    for branch in BRANCHES:
        check_backbone(cfg[branch], branch)
    root = category_dir(cfg)
    check_dataset(root, splits=("train",))
    check_dataset(root, cfg.data.eval_size, splits=("test",))
    check_writable(Path(cfg.paths.models), "paths.models")
    check_writable(Path(cfg.paths.results), "paths.results")


def train_all(cfg, retrain: bool = False, check: bool = True) -> dict:
    """The three fitted branches, each backbone built once (loaded where a valid model file exists;
    ``check`` off: the caller ran ``check_inputs``)."""
    device = resolve_device(cfg.device)
    branches = {}
    for branch in BRANCHES:
        with step(f"train {branch}"):
            branches[branch], _ = trained_branch(branch, cfg, device, retrain, check=check)
    return branches


def main(argv=None) -> dict:
    t0 = time.perf_counter()
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    add_evaluation_args(parser)
    parser.add_argument("--retrain", action="store_true", help="retrain every branch even where a valid model file exists")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    with step("checks"):
        check_inputs(cfg)
    branches = train_all(cfg, args.retrain, check=False)  # the dataset was checked once, above
    with step("evaluate"):
        preds = evaluate(cfg, branches, check=False)
    with step("report"):
        result = report_predictions(cfg, preds, save_predictions=args.save_predictions, heatmaps=args.heatmaps,
                                    panels=args.panels, ablation=args.ablation)
    log.info("usad.run done in %.1f s", time.perf_counter() - t0)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
