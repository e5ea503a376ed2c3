"""Sensitivity sweeps on the golden fixture: the tau sweep runs the backbones once."""

import csv

import numpy as np
import pytest
import torch

from usad.backbones import ResNetFeatures, ViTFeatures
from usad.sweep import run_sweep


class BackboneCalls:
    """Counts forward passes of our backbone modules through a real global forward hook."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        def hook(module, args, output):
            if isinstance(module, (ViTFeatures, ResNetFeatures)):
                self.calls += 1
        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_tau_sweep_runs_backbones_once_and_matches_evaluation(golden_run):
    cfg = golden_run["config"]
    n_batches = -(-len(golden_run["ours"]["label"]) // cfg.data.batch_size)
    with BackboneCalls() as counter:
        rows = run_sweep(cfg, "tau", [1.05, 1.14, 1.25])
    assert counter.calls == 3 * n_batches  # three backbones, each over the test set once
    at_default = rows[1]
    assert at_default["tau"] == 1.14
    main = golden_run["metrics"]
    for key in ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3"):
        assert at_default[key] == pytest.approx(main[key], abs=1e-6), key
    out = golden_run["tmp"] / "results" / "data" / "sweeps"
    with open(out / "tau.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["tau"]) for r in table] == [1.05, 1.14, 1.25]
    assert (out / "tau.png").stat().st_size > 1000


def test_maclu_resolution_sweep_reports_throughput(golden_run):
    rows = run_sweep(golden_run["config"], "maclu_resolution", [224, 350])
    assert [r["image_size"] for r in rows] == [224, 350]
    assert all(r["throughput_img_s"] > 0 for r in rows)
    # the 350 point refits MACLU exactly as training did: same metrics as the main evaluation
    assert rows[1]["image_auroc"] == pytest.approx(golden_run["metrics"]["image_auroc"], abs=1e-6)
    assert rows[1]["pixel_auroc"] == pytest.approx(golden_run["metrics"]["pixel_auroc"], abs=1e-6)
    assert np.isfinite([rows[0][k] for k in ("image_auroc", "pixel_auroc", "pro_auc_usad")]).all()
