"""python -m usad.compare: the table, the predictions contract, resuming, the errors, the figures.

One module-scoped sequence on tiny random models and a generated CoalAD-layout set:
  run      python -m usad.run (model files, metrics.json): the independent evaluation
  first    compare --methods usad: USAD's row from usad.run's model files (nothing refitted)
  again    the same: nothing reruns, nothing on disk changes
The other methods of the registry are left out here (their own tests run them); LOCO and Ray have their files.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import usad.experiments.run
import usad.models
from usad.core.cli import run_cli
from usad.core.data import dataset
from usad.core.data.synthetic import make_synthetic_coalad
from usad.core.panels import BAR_HEIGHT
from usad.experiments import compare
from usad.experiments.report import PAPER_TABLE1
from usad.models.usad.branches import BRANCHES, model_path

from conftest import config_argv, sha, tiny_config, tree_hashes
from test_run import SMALL, assert_same_metrics

ROW_KEYS = {"status", "image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3", "train_s", "predict_s",
            "images_per_s", "peak_host_mb", "peak_gpu_mb", "paper", "paper_name", "settings", "weights_sha256", "fit"}


def compare_dir(cfg) -> Path:
    return Path(cfg.paths.results) / cfg.data.category / "compare"


def model_mtimes(cfg) -> dict:
    return {b: model_path(cfg, b).stat().st_mtime_ns for b in BRANCHES}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    make_synthetic_coalad(tmp / "data", n_train=8, n_test_good=4, n_test_anomalous=4, size=96)
    torch.manual_seed(0)
    weights = tmp / "resnet18.pth"  # a local weights file: its SHA-256 goes into table1.json
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg = tiny_config(tmp, tmp / "data", "coal_ad", *SMALL, f"patchcore.weights={weights}")
    argv = config_argv(cfg, tmp)
    direct = usad.experiments.run.main(argv + ["--heatmaps", "0", "--panels", "0"])
    models = model_mtimes(cfg)
    record = {"cfg": cfg, "argv": argv, "tmp": tmp, "direct": direct, "weights": weights}
    for name in ("first", "again"):
        before = tree_hashes(compare_dir(cfg)) if compare_dir(cfg).is_dir() else {}
        stamps = {p.name: p.stat().st_mtime_ns for p in (compare_dir(cfg) / "stages").glob("*.json")}
        tables = compare.main(argv + ["--methods", "usad"])
        record[name] = {"table": tables["coal_ad"], "before": before, "stamps_before": stamps,
                        "after": tree_hashes(compare_dir(cfg)), "models": model_mtimes(cfg)}
    record["models"] = models
    return record


def test_table1_json_has_every_number(world):
    table = json.loads((compare_dir(world["cfg"]) / "table1.json").read_text())
    row = table["methods"]["usad"]
    assert ROW_KEYS <= set(row) and row["status"] == "ran"
    assert row["paper"] == dict(zip(("image_auroc", "pixel_auroc", "pro_auc_usad"), PAPER_TABLE1["USAD (fused)"]))
    assert row["weights_sha256"] == {"patchcore.weights": sha(world["weights"])}
    assert row["n_test"] == table["n_test"] == 8 and row["images_per_s"] == pytest.approx(8 / row["predict_s"])
    assert row["peak_host_mb"]["predict"] > 100 and row["peak_gpu_mb"] is None  # a CPU run: torch alone is > 100 MB
    assert row["settings"]["maclu"]["tau"] == world["cfg"].maclu.tau
    assert table["paper_table1"] == {k: list(v) for k, v in PAPER_TABLE1.items()}


def test_usad_equals_usad_run_on_the_same_model_files(world):
    """compare reuses usad.run's model files (none refitted) and its numbers are usad.run's metrics.json."""
    row = world["first"]["table"]["methods"]["usad"]
    assert row["fit"] == "loaded" and row["train_s"] is None
    assert world["first"]["models"] == world["models"]  # no model file written
    metrics = json.loads((Path(world["cfg"].paths.results) / "coal_ad" / "metrics.json").read_text())["metrics"]
    ours = {k: row[k] for k in ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3")}
    assert_same_metrics(ours, {k: metrics[k] for k in ours}, tol=1e-12)


def test_predictions_npz_contract(world):
    cfg = world["cfg"]
    z = np.load(compare_dir(cfg) / "usad" / "predictions.npz")
    assert set(z.files) == {"files", "label", "score", "map", "mask", "defect"}
    root = Path(cfg.data.root) / "coal_ad"
    samples = dataset.test_samples(root)  # the evaluation order of test_fusion.py
    assert list(z["files"]) == [s.relative(root) for s in samples]
    assert z["label"].tolist() == [s.label for s in samples]
    assert list(z["defect"]) == [s.kind for s in samples]
    n, size = len(samples), cfg.data.eval_size
    assert z["score"].shape == (n,) and z["score"].dtype == np.float32
    assert z["map"].shape == z["mask"].shape == (n, size, size) and z["map"].dtype == np.float32
    for s, m in zip(samples, z["mask"]):  # the ground truth of test_fusion.py: nearest resize, >= 128
        want = np.zeros((size, size)) if s.mask_path is None else \
            dataset.mask_transform(size)(Image.open(s.mask_path).convert("L")).numpy()
        np.testing.assert_array_equal(m, want)
    assert all(z["mask"][i].any() == bool(z["label"][i]) for i in range(n))


def test_second_run_reruns_nothing(world):
    again = world["again"]
    assert again["table"]["methods"]["usad"]["stage"]["this_run"] == "up to date"
    stamps = {p.name: p.stat().st_mtime_ns for p in (compare_dir(world["cfg"]) / "stages").glob("*.json")}
    assert stamps == again["stamps_before"]  # no stamp rewritten: no job, no figures redrawn
    changed = {k for k in again["after"] if again["after"][k] != again["before"].get(k)}
    assert changed <= {"table1.json", "table1.md"}  # rewritten with the same numbers
    assert json.loads((compare_dir(world["cfg"]) / "table1.json").read_text())["methods"]["usad"]["image_auroc"] == \
        world["first"]["table"]["methods"]["usad"]["image_auroc"]
    assert again["models"] == world["models"]


def test_figures_show_the_lowest_and_highest_contrast_images(world):
    cfg = world["cfg"]
    info = world["first"]["table"]["figures"]
    k, px = cfg.compare.figure_images, cfg.compare.figure_tile
    z = np.load(compare_dir(cfg) / "usad" / "predictions.npz")
    root = Path(cfg.data.root) / "coal_ad"
    contrast = {}  # brute force: mean RGB inside vs outside the ground truth, image at the evaluation size
    for f, m in zip(z["files"], z["mask"]):
        if m.any():
            img = np.asarray(Image.open(root / f).convert("RGB").resize(m.shape[::-1], Image.BICUBIC), float)
            contrast[str(f)] = float(np.sqrt(((img[m > 0].mean(0) - img[m == 0].mean(0)) ** 2).sum()))
    ranked = sorted(contrast, key=contrast.get)
    assert [c["file"] for c in info["images"]["low"]] == ranked[:k]
    assert [c["file"] for c in info["images"]["high"]] == ranked[::-1][:k]
    assert info["colour_ranges"]["USAD (fused)"] == [min(0.0, float(z["map"].min())), float(z["map"].max())]
    for name in ("fig7_low_contrast.png", "fig8_high_contrast.png"):
        with Image.open(compare_dir(cfg) / name) as im:  # k rows of input | ground truth | one method
            assert im.size == (3 * px, k * (px + 2 * BAR_HEIGHT))
    md = (compare_dir(cfg) / "table1.md").read_text()
    assert "](fig7_low_contrast.png)" in md and "](fig8_high_contrast.png)" in md


def test_table1_md_puts_the_paper_beside_this_run(world):
    md = (compare_dir(world["cfg"]) / "table1.md").read_text()
    row = world["first"]["table"]["methods"]["usad"]
    line = next(x for x in md.splitlines() if x.startswith("| USAD (fused) |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    ours = f"{100 * row['image_auroc']:.2f}"
    assert cells[1:4] == ["98.83", ours, f"{float(ours) - 98.83:+.2f}"]
    assert cells[-1] == "ran"
    assert "| PatchCore (paper only) | 94.47 |" in md  # the paper's rows of methods not run


# ------------------------------------------------------------------ errors: one message, exit status 2
def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("case", ["unknown method", "missing weights", "bad layout", "bad ratio"])
def test_errors_are_one_message_and_exit_status_2(world, case, caplog, tmp_path):
    argv = world["argv"] + ["--set", f"paths.results={tmp_path / 'results'}", "--set", f"paths.models={tmp_path / 'm'}"]
    extra, expected = {
        "unknown method": (["--methods", "usad,nosuch"], "unknown method 'nosuch'"),
        "missing weights": (["--methods", "usad", "--set", f"maclu.weights={tmp_path / 'none.pth'}"], "maclu.weights"),
        "bad layout": (["--methods", "usad", "--set", f"data.root={tmp_path}", "--set", "data.category=empty"],
                       "does not exist"),
        "bad ratio": (["--methods", "usad", "--set", "compare.validation_ratio=1.0"], "compare.validation_ratio"),
    }[case]
    if case == "bad layout":
        (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
        expected = "no training images"
    with caplog.at_level(logging.ERROR):
        assert run_cli(compare.main, argv + extra) == 2
    assert len(errors(caplog)) == 1 and expected in errors(caplog)[0], errors(caplog)
    assert not (tmp_path / "results").exists() and not (tmp_path / "m").exists()  # nothing fitted or written


def test_a_method_that_cannot_run_gets_its_reason_unless_named(world, monkeypatch, caplog):
    """Without --methods every method of the registry is tried; one whose module is missing gets
    'not run: <reason>'. Named with --methods, the same method is an error (exit status 2)."""
    for name in list(usad.models.METHODS):
        if name != "usad":
            monkeypatch.delitem(usad.models.METHODS, name)
    monkeypatch.setitem(usad.models.METHODS, "ghost", "usad.models.ghost.method:Ghost")
    table = compare.main(world["argv"])["coal_ad"]
    assert table["methods"]["usad"]["status"] == "ran"
    assert table["methods"]["ghost"]["status"] == \
        "not run: method 'ghost': cannot import usad.models.ghost.method (No module named 'usad.models.ghost')"
    md = (compare_dir(world["cfg"]) / "table1.md").read_text()
    assert "| ghost |" in md and "not run: method 'ghost'" in md
    with caplog.at_level(logging.ERROR):
        assert run_cli(compare.main, world["argv"] + ["--methods", "usad,ghost"]) == 2
    assert len(errors(caplog)) == 1 and "cannot import usad.models.ghost.method" in errors(caplog)[0]


def test_a_job_that_fails_is_its_row_unless_named(world, monkeypatch, caplog, tmp_path):
    """A UsadError inside a job (here: a PatchCore bank smaller than k_nearest, found at prediction) gives that
    method's row 'failed: <message>' in a default run, and exit status 2 when the method was named."""
    for name in list(usad.models.METHODS):
        if name != "usad":
            monkeypatch.delitem(usad.models.METHODS, name)
    argv = world["argv"] + ["--set", "patchcore.coreset_ratio=0.0001", "--set", f"paths.models={tmp_path / 'm'}",
                            "--set", f"paths.results={tmp_path / 'r'}"]
    row = compare.main(argv)["coal_ad"]["methods"]["usad"]
    assert row["status"].startswith("failed: the PatchCore memory bank has 1 vector(s), fewer than k_nearest = 3")
    assert "| failed: the PatchCore memory bank" in (tmp_path / "r" / "coal_ad" / "compare" / "table1.md").read_text()
    assert not (tmp_path / "r" / "coal_ad" / "compare" / "stages" / "usad.json").exists()  # not stamped: reruns
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_cli(compare.main, argv + ["--methods", "usad"]) == 2
    assert len(errors(caplog)) == 1 and "fewer than k_nearest" in errors(caplog)[0]


# ------------------------------------------------------------------ what reruns
def test_a_setting_reruns_the_job_without_refitting_and_retrain_refits(world):
    cfg, argv = world["cfg"], world["argv"]
    table = compare.main(argv + ["--methods", "usad", "--set", "maclu.tau=1.2"])["coal_ad"]
    row = table["methods"]["usad"]
    assert row["stage"]["this_run"].startswith("ran (maclu.tau: 1.14 -> 1.2")
    assert row["fit"] == "loaded" and model_mtimes(cfg) == world["models"]
    table = compare.main(argv + ["--methods", "usad", "--set", "maclu.tau=1.2", "--retrain"])["coal_ad"]
    assert table["methods"]["usad"]["fit"] == "trained" and table["methods"]["usad"]["train_s"] > 0
    assert all(model_mtimes(cfg)[b] != world["models"][b] for b in BRANCHES)


def test_validation_is_a_seeded_share_of_train_good(world):
    """CoalAD / MVTec AD: compare.validation_ratio of train/good, drawn with the seed, out of the training set."""
    from usad.core.data.layouts import read_layout
    from usad.experiments.compare_jobs import fit_split

    layout = read_layout(Path(world["cfg"].data.root) / "coal_ad")
    split = fit_split(layout, 0.25, 22)
    assert len(split.validation) == 2 and sorted(split.train + split.validation) == sorted(layout.train)
    assert not set(split.train) & set(split.validation)
    assert split.train == [p for p in layout.train if p not in split.validation]  # file order kept
    assert fit_split(layout, 0.25, 22) == split and fit_split(layout, 0.25, 23).validation != split.validation
    assert fit_split(layout, 0.0, 22).validation == [] and fit_split(layout, 0.0, 22).train == layout.train
    row = world["first"]["table"]["methods"]["usad"]
    assert (row["n_train"], row["n_validation"]) == (7, 1)  # the default 0.1 of 8 images
