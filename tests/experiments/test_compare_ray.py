"""usad.compare --ray: two tiny jobs as tasks of a local Ray cluster (2 CPUs) give the table of a serial run,
and a rerun submits nothing. Needs Ray (requirements-ray.txt); skipped without it."""

import os

import numpy as np
import pytest

from usad.core.data.synthetic import make_synthetic_coalad
from usad.experiments import compare

from conftest import config_argv, tiny_config
from test_run import SMALL

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")

CATEGORIES = ("belt_a", "belt_b")
METRICS = ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3")


def run(argv, out, *extra):
    return compare.main(argv + ["--methods", "usad", "--categories", ",".join(CATEGORIES),
                                "--set", f"paths.results={out / 'results'}", "--set", f"paths.models={out / 'models'}",
                                *extra])


def test_ray_jobs_give_the_serial_table(tmp_path):
    for seed, category in enumerate(CATEGORIES):
        make_synthetic_coalad(tmp_path / "data", category, n_train=8, n_test_good=3, n_test_anomalous=3, size=96,
                              seed=seed)
    argv = config_argv(tiny_config(tmp_path, tmp_path / "data", CATEGORIES[0], *SMALL), tmp_path)
    serial = run(argv, tmp_path / "serial")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        parallel = run(argv, tmp_path / "ray", "--ray")
        again = run(argv, tmp_path / "ray", "--ray")
    finally:
        ray.shutdown()
    pids = set()
    for category in CATEGORIES:
        a, b = serial[category]["methods"]["usad"], parallel[category]["methods"]["usad"]
        assert a["status"] == b["status"] == "ran" and a["fit"] == b["fit"] == "trained"
        assert a["stage"]["this_run"].startswith("ran (first run)") and b["stage"]["this_run"] == "ran (ray)"
        assert {k: b[k] for k in METRICS} == pytest.approx({k: a[k] for k in METRICS}, abs=1e-6)
        assert (a["n_test"], a["settings"], a["fit_config"]) == (b["n_test"], b["settings"], b["fit_config"])
        za = np.load(tmp_path / "serial" / "results" / category / "compare" / "usad" / "predictions.npz")
        zb = np.load(tmp_path / "ray" / "results" / category / "compare" / "usad" / "predictions.npz")
        for key in ("files", "label", "mask"):
            np.testing.assert_array_equal(za[key], zb[key])
        np.testing.assert_allclose(zb["score"], za["score"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(zb["map"], za["map"], rtol=1e-4, atol=1e-5)
        assert again[category]["methods"]["usad"]["stage"]["this_run"] == "up to date"  # nothing submitted
        assert again[category]["methods"]["usad"]["stage"]["finished"] == b["stage"]["finished"]
        pids.add(b["pid"])
    assert len(pids) == 2 and os.getpid() not in pids  # two Ray worker processes, not this one
