"""python -m usad.run: the three trainings and the evaluation in one process.

On the golden fixture it must give exactly what the four scripts give (and so agree with the
authors' outputs); on tiny random models, valid model files are reused and --retrain refits.
"""

import logging
import shutil

import numpy as np
import pytest
import torch

import usad.experiments.run
from usad.core.backbones import ResNetFeatures, ViTFeatures
from usad.core.data.synthetic import make_synthetic_coalad
from usad.models.usad.branches import BRANCHES, model_path

from conftest import config_argv, golden_argv, tiny_config
from test_golden import METRIC_TOL, PEARSON_MIN, pearson
from test_sweep import BackboneCalls

# Tiny random backbones at small sizes: a whole run in a few seconds.
SMALL = ("data.eval_size=112", "maclu.image_size=56", "ma2patch.image_size=56", "patchcore.image_size=64",
         "patchcore.coreset_ratio=0.1")


def flat_numbers(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat_numbers(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def assert_same_metrics(a: dict, b: dict, tol: float = 1e-9) -> None:
    """Two metrics dicts (nested: ablation, branch AUROCs) with the same keys and values within ``tol``."""
    a, b = flat_numbers(a), flat_numbers(b)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=tol), k


def tiny_setup(tmp):
    """A generated CoalAD-layout set (8 train, 4 + 4 test) and the tiny config on it."""
    make_synthetic_coalad(tmp / "data", n_train=8, n_test_good=4, n_test_anomalous=4, size=96)
    return tiny_config(tmp, tmp / "data", "coal_ad", *SMALL)


class BackboneBuilds:
    """Counts the backbone modules built (each registers its network once, through a real global hook)."""

    def __init__(self):
        self.built = set()

    def __enter__(self):
        def hook(module, name, submodule):
            if isinstance(module, (ViTFeatures, ResNetFeatures)):
                self.built.add(id(module))
        self.handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def golden_one_process(golden_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_golden")
    out = tmp / "predictions.npz"
    with BackboneBuilds() as builds:
        result = usad.experiments.run.main(golden_argv(tmp) + ["--save-predictions", str(out), "--heatmaps", "2", "--ablation"])
    return {"tmp": tmp, "metrics": result, "ours": np.load(out), "builds": len(builds.built)}


def test_golden_equals_the_four_scripts(golden_run, golden_one_process):
    scripts, one = golden_run["ours"], golden_one_process["ours"]
    assert list(one["files"]) == list(scripts["files"])
    for key in scripts.files:
        if key != "files":
            np.testing.assert_allclose(one[key], scripts[key], rtol=0, atol=1e-6, err_msg=key)
    assert_same_metrics(golden_one_process["metrics"], golden_run["metrics"])
    for b in BRANCHES:  # the same fitted models: same content checksum
        ours = torch.load(golden_one_process["tmp"] / "models" / "data" / f"{b}.pt", weights_only=True)
        theirs = torch.load(golden_run["tmp"] / "models" / "data" / f"{b}.pt", weights_only=True)
        assert ours["sha256"] == theirs["sha256"], b


def test_golden_agrees_with_the_reference(golden_run, golden_one_process):
    ref, ours, m = golden_run["ref"], golden_one_process["ours"], golden_one_process["metrics"]
    for key in ("s_obj", "s_attr", "s_pc", "s_fused"):
        assert pearson(ours[key], ref[key]) >= PEARSON_MIN, key
    for ours_key, ref_key in (("image_auroc", "metric_image_auroc_fused"), ("pixel_auroc", "metric_pixel_auroc_fused"),
                              ("pro_auc_usad", "metric_pro_auc_official")):
        assert abs(m[ours_key] - float(ref[ref_key])) <= METRIC_TOL, ours_key


def test_golden_outputs_written_once_per_backbone(golden_one_process):
    results = golden_one_process["tmp"] / "results" / "data"
    assert (results / "metrics.json").is_file() and (results / "ablation.json").is_file()
    assert len(list((results / "heatmaps").glob("*.png"))) == 2 and len(list((results / "panels").glob("*.png"))) == 4
    assert golden_one_process["builds"] == 3  # fitted branches are evaluated as they are, not rebuilt


# ------------------------------------------------------------------ reuse and --retrain, tiny models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_tiny")
    cfg = tiny_setup(tmp)
    argv = config_argv(cfg, tmp) + ["--heatmaps", "0", "--panels", "0"]
    first = usad.experiments.run.main(argv)
    return {"argv": argv, "cfg": cfg, "metrics": first, "tmp": tmp}


def mtimes(cfg) -> dict:
    return {b: model_path(cfg, b).stat().st_mtime_ns for b in BRANCHES}


def test_valid_model_files_are_used_not_retrained(tiny, caplog):
    before = mtimes(tiny["cfg"])
    with BackboneCalls() as calls, caplog.at_level(logging.INFO, logger="usad"):
        again = usad.experiments.run.main(tiny["argv"])
    assert mtimes(tiny["cfg"]) == before
    assert calls.calls == 3  # evaluation only: 3 backbones x 1 test batch (8 images), no training pass
    assert caplog.text.count("not retrained") == 3
    assert_same_metrics(again, tiny["metrics"])  # loaded = fitted (random weights rebuilt alike)


def test_retrain_refits_every_branch(tiny):
    before = mtimes(tiny["cfg"])
    sums = {b: torch.load(model_path(tiny["cfg"], b), weights_only=True)["sha256"] for b in BRANCHES}
    usad.experiments.run.main(tiny["argv"] + ["--retrain"])
    after = mtimes(tiny["cfg"])
    assert all(after[b] != before[b] for b in BRANCHES)
    assert {b: torch.load(model_path(tiny["cfg"], b), weights_only=True)["sha256"] for b in BRANCHES} == sums


def test_a_file_fitted_with_another_config_is_retrained_alone(tiny, tmp_path, caplog):
    models = tmp_path / "models"
    shutil.copytree(tiny["tmp"] / "models", models)
    argv = tiny["argv"] + ["--set", f"paths.models={models}", "--set", f"paths.results={tmp_path / 'results'}"]
    before = {b: (models / "coal_ad" / f"{b}.pt").stat().st_mtime_ns for b in BRANCHES}
    with caplog.at_level(logging.INFO, logger="usad"):
        usad.experiments.run.main(argv + ["--set", "patchcore.coreset_ratio=0.2"])
    after = {b: (models / "coal_ad" / f"{b}.pt").stat().st_mtime_ns for b in BRANCHES}
    assert [b for b in BRANCHES if after[b] != before[b]] == ["patchcore"]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "retraining" in r.getMessage()]
    assert len(warning) == 1 and "coreset_ratio: file has 0.1, config has 0.2" in warning[0]
