"""The whole run in one process: the three trainings and the evaluation (``python -m usad.run``).

    python -m usad.run --config configs/coalad.yaml [--set KEY=VALUE ...] [--retrain]
                       [--save-predictions FILE.npz] [--heatmaps N|all] [--panels N|all] [--ablation]

Does what ``train_ma_clu.py``, ``train_ma2patch.py``, ``train_pc.py`` and
``test_fusion.py`` do, with the same options and outputs, but pays the start-up
(imports, device set-up) once and builds each backbone once: a branch fitted
here is evaluated as it is, without being read back from its file.

A branch whose model file is already there and valid for this config (it loads,
its checksum holds, and it was fitted with this config's values of that branch:
see ``usad.core.artifacts``) is loaded instead of retrained; ``--retrain`` retrains
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
from pathlib import Path

from usad.core.artifacts import check_writable
from usad.core.backbones import check_backbone, resolve_device
from usad.core.cli import run_cli, step
from usad.core.config import add_config_args, config_from_args
from usad.core.data.checks import check_dataset
from usad.core.paths import category_dir
from usad.experiments.evaluation import add_evaluation_args, report_predictions
from usad.models.usad.branches import BRANCHES, trained_branch
from usad.models.usad.inference import evaluate

log = logging.getLogger("usad")


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
