"""Sensitivity sweeps on the golden fixture: the tau sweep runs the backbones once."""

import csv
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from usad.core import metrics
from usad.experiments import sweep
from usad.core.backbones import ResNetFeatures, ViTFeatures
from usad.core.config import with_overrides
from usad.core.cli import run_cli
from usad.models.usad.branches import load_branches
from usad.models.usad.inference import evaluate
from usad.experiments.sweep import backbone_throughput, figure, run_sweep

TAUS = [1.05, 1.14, 1.21, 1.25]


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


def n_batches(golden_run) -> int:
    return -(-len(golden_run["ours"]["label"]) // golden_run["config"].data.batch_size)


@pytest.fixture(scope="module")
def tau_sweep(golden_run):
    with BackboneCalls() as counter:
        rows = run_sweep(golden_run["config"], "tau", TAUS)
    return rows, counter.calls


def test_tau_sweep_runs_backbones_once_and_matches_evaluation(golden_run, tau_sweep):
    rows, calls = tau_sweep
    assert calls == 3 * n_batches(golden_run)  # three backbones, each over the test set once
    at_default = rows[1]
    assert at_default["tau"] == 1.14
    main = golden_run["metrics"]
    for key in ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3"):
        assert at_default[key] == pytest.approx(main[key], abs=1e-6), key
    out = golden_run["tmp"] / "results" / "data" / "sweeps"
    with open(out / "tau.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["tau"]) for r in table] == TAUS
    assert (out / "tau.png").stat().st_size > 1000


def test_tau_point_equals_an_evaluation_at_that_tau(golden_run, tau_sweep):
    rows, _ = tau_sweep
    point = rows[TAUS.index(1.21)]
    preds = evaluate(with_overrides(golden_run["config"], "maclu.tau=1.21"))
    expected = metrics.compute_all(preds.label, preds.scores["s_fused"], preds.mask, preds.maps["m_fused"])
    for key, value in expected.items():
        assert point[key] == pytest.approx(value, abs=1e-6), key
    assert expected != pytest.approx({k: rows[1][k] for k in expected}, abs=1e-6)  # tau 1.21 really differs from 1.14


def test_maclu_resolution_sweep_reports_throughput(golden_run):
    rows = run_sweep(golden_run["config"], "maclu_resolution", [224, 350])
    assert [r["image_size"] for r in rows] == [224, 350]
    assert all(r["throughput_img_s"] > 0 for r in rows)
    # the 350 point refits MACLU exactly as training did: same metrics as the main evaluation
    assert rows[1]["image_auroc"] == pytest.approx(golden_run["metrics"]["image_auroc"], abs=1e-6)
    assert rows[1]["pixel_auroc"] == pytest.approx(golden_run["metrics"]["pixel_auroc"], abs=1e-6)
    assert rows[1]["branch_image_auroc"] == pytest.approx(golden_run["metrics"]["image_auroc_branches"]["s_obj"], abs=1e-6)
    assert np.isfinite([rows[0][k] for k in ("image_auroc", "pixel_auroc", "pro_auc_usad")]).all()


class FakeClock:
    """perf_counter for sweep.py that only moves when a backbone runs: 0.25 s per image, +100 s on the first call."""

    def __init__(self, module: torch.nn.Module):
        self.now, self.forwards = 0.0, 0
        module.register_forward_hook(self.tick)

    def tick(self, module, args, output):
        self.now += 0.25 * len(args[0]) + (100.0 if self.forwards == 0 else 0.0)
        self.forwards += 1


def test_throughput_times_only_the_backbone_after_a_warm_up(golden_run, tmp_path, monkeypatch):
    cfg = with_overrides(golden_run["config"], f"cache.dir={tmp_path / 'cache'}")
    branches = load_branches(cfg, torch.device("cpu"))
    evaluate(cfg, branches)  # the feature cache now holds every test image: evaluation would skip the backbones
    clock = FakeClock(branches["ma2patch"].backbone)
    monkeypatch.setattr(sweep, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    # every batch is timed once through the backbone; the warm-up (the slow first call) is not timed
    assert backbone_throughput(branches["ma2patch"], cfg, torch.device("cpu")) == pytest.approx(4.0)
    assert clock.forwards == 1 + n_batches(golden_run)
    clock.forwards = 0
    assert backbone_throughput(branches["ma2patch"], cfg, torch.device("cpu"), n_batches=1) == pytest.approx(4.0)
    assert clock.forwards == 2


def test_bad_values_are_rejected_before_any_compute(golden_run, monkeypatch, caplog):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a sweep point ran before the values were checked")
    for name in ("fit_branch", "evaluate"):
        monkeypatch.setattr(sweep, name, must_not_run)
    argv = golden_run["argv"]
    out = golden_run["tmp"] / "results" / "data" / "sweeps"
    with caplog.at_level(logging.ERROR, logger="usad"):
        assert run_cli(sweep.main, argv + ["--sweep", "ma2patch_resolution", "--values", "308,304"]) == 2
    assert "304" in caplog.text and "patch size 14" in caplog.text and "308" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="usad"):
        assert run_cli(sweep.main, argv + ["--sweep", "maclu_resolution", "--values", "350,0"]) == 2
    assert "maclu.image_size = 0 in --values is not a whole number of pixels >= the patch size 14" in caplog.text
    assert not (out / "ma2patch_resolution.csv").exists()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="usad"):
        assert run_cli(sweep.main, argv + ["--sweep", "all", "--values", "1.1,1.2"]) == 2
    assert "--values applies to one sweep" in caplog.text
    with pytest.raises(SystemExit) as e:
        sweep.main(argv + ["--sweep", "tau", "--values", "1.1,abc"])
    assert e.value.code == 2


def test_csv_keeps_finished_points_when_a_later_point_fails(golden_run, tmp_path, monkeypatch):
    cfg = with_overrides(golden_run["config"], f"paths.results={tmp_path}")
    real, calls = sweep.fused_metrics, []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash at the second point")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "fused_metrics", fails_second)
    with pytest.raises(RuntimeError, match="simulated"):
        run_sweep(cfg, "tau", [1.14, 1.21])
    with open(tmp_path / "data" / "sweeps" / "tau.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["tau"]) for r in table] == [1.14]
    assert float(table[0]["image_auroc"]) == pytest.approx(golden_run["metrics"]["image_auroc"], abs=1e-6)
    assert (tmp_path / "data" / "sweeps" / "tau.png").is_file()


def test_plot_legend_is_clear_of_the_axes():
    rows = [{"image_size": s, "throughput_img_s": t, "image_auroc": a, "pixel_auroc": 0.97, "pro_auc_usad": 0.9,
             "branch_image_auroc": a - 0.02, "branch_pixel_auroc": 0.95, "branch_pro_auc_usad": 0.85}
            for s, t, a in ((224, 40.0, 0.95), (350, 20.0, 0.99), (504, 8.0, 0.97))]
    fig = figure(rows, "image_size", "Fig. 10", "maclu")
    renderer = fig.canvas.get_renderer()
    (ax, *_) = fig.axes
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert len(legends) == 1
    labels = [t.get_text() for t in legends[0].get_texts()]
    assert len(labels) == 7 and "Image-AUC (MACLU alone)" in labels and "images/s (backbone)" in labels
    assert not legends[0].get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
