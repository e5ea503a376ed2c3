"""python -m usad.reproduce: the report's numbers and links, resumption, and stage invalidation.

One module-scoped sequence of runs on tiny random models and a generated set:
  A  first run                         (everything runs)
  B  the same again                    (every stage skipped, nothing on disk changes)
  C  --set maclu.tau=1.2               (the MACLU maps onward: no training, no evaluation backbone pass)
  D  ... and maclu.kmeans_seed=7       (a MACLU fit value: that branch alone is retrained)
Runs A and C are checked against ``python -m usad.run`` on the same config (an independent evaluation).
"""

import json
import re
import time
from pathlib import Path

import pytest

import usad.experiments.run
from usad.experiments import reproduce
from usad.models.usad.branches import BRANCHES, model_path

from conftest import config_argv, tree_hashes
from test_run import assert_same_metrics, tiny_setup
from test_sweep import BackboneCalls

OPTIONS = ["--values", "tau=1.1,1.14,1.2", "--values", "maclu_resolution=42", "--skip", "ma2patch_resolution",
           "--heatmaps", "2", "--panels", "2", "--set", "compare.methods=[usad]"]  # the other methods: test_compare*


def statuses(run) -> dict[str, str]:
    """stage -> "ran" / "up to date" / "skipped" (the status without its reason)."""
    return {name: rec["status"].split(" (")[0] for name, rec in run.records.items()}


def results_state(cfg) -> dict:
    """Hashes of every result file but the report (rewritten at every run) and of the model files."""
    out = Path(cfg.paths.results) / cfg.data.category
    files = {k: v for k, v in tree_hashes(out).items() if k != "report.md"} if out.is_dir() else {}
    return {"results": files, "models": {b: model_path(cfg, b).stat().st_mtime_ns if model_path(cfg, b).is_file() else None
                                         for b in BRANCHES}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    cfg = tiny_setup(tmp)
    argv = config_argv(cfg, tmp)
    direct = lambda *sets: usad.experiments.run.main(argv + ["--heatmaps", "0", "--panels", "0", "--ablation",
                                                 "--set", f"paths.results={tmp / 'direct'}", *sets])
    record = {"cfg": cfg, "tmp": tmp}
    for name, sets in (("A", []), ("B", []), ("C", ["maclu.tau=1.2"]), ("D", ["maclu.tau=1.2", "maclu.kmeans_seed=7"])):
        extra = [x for s in sets for x in ("--set", s)]
        before = results_state(cfg)
        t0 = time.perf_counter()
        with BackboneCalls() as calls:
            run = reproduce.main(argv + OPTIONS + extra)
        record[name] = {"run": run, "seconds": time.perf_counter() - t0, "calls": calls.calls, "before": before,
                        "after": results_state(cfg), "metrics": json.loads((run.out / "metrics.json").read_text()),
                        "ablation": json.loads((run.out / "ablation.json").read_text())}
        if name in ("A", "C"):
            record[name]["direct"] = direct(*extra)
    return record


def test_first_run_runs_every_stage_but_the_skipped(runs):
    assert statuses(runs["A"]["run"]) == {**{s: "ran" for s in reproduce.STAGES},
                                          "sweep.ma2patch_resolution": "skipped"}


def test_table1_and_ablation_equal_a_direct_evaluation(runs):
    """The stored-outputs path (branch outputs on disk, maps re-fused) gives usad.run's numbers."""
    for name in ("A", "C"):
        assert_same_metrics({**runs[name]["metrics"]["metrics"], "ablation": runs[name]["ablation"]}, runs[name]["direct"])


def test_rerun_skips_every_stage_and_changes_nothing(runs):
    a, b = runs["A"], runs["B"]
    assert statuses(b["run"]) == {**{s: "up to date" for s in reproduce.STAGES},
                                  "sweep.ma2patch_resolution": "skipped", "report": "ran"}
    assert b["calls"] == 0  # no backbone ran
    assert b["after"] == b["before"] == a["after"]
    assert b["seconds"] <= 0.3 * a["seconds"], (b["seconds"], a["seconds"])


def test_tau_reruns_only_the_maclu_maps_onward(runs):
    c = runs["C"]
    ran = {s for s, v in statuses(c["run"]).items() if v == "ran"}
    assert ran == {"table1", "heatmaps", "ablation", "panels", "compare", "sweep.maclu_resolution", "report"}
    assert c["after"]["models"] == c["before"]["models"]  # no training
    for kept in ("reproduce/outputs.npz", "reproduce/sweeps/maclu_resolution/maclu_42.pt", "sweeps/tau.csv"):
        assert c["after"]["results"][kept] == c["before"]["results"][kept], kept  # evaluation, sweep point model, tau sweep
    assert c["metrics"]["config"]["maclu"]["tau"] == 1.2
    # the resolution point is re-evaluated (it fuses at the config's tau), its refit model reused: 3 backbones over
    # the test set and its throughput batches, never a training pass (8 training images would add MACLU batches)
    assert c["calls"] == 3 + 2  # 1 test batch x 3 backbones, then 1 warm-up + 1 timed batch of the swept backbone


def test_a_fit_value_retrains_that_branch_alone(runs):
    d = runs["D"]
    st = statuses(d["run"])
    assert {b: st[f"train.{b}"] for b in BRANCHES} == {"maclu": "ran", "ma2patch": "up to date", "patchcore": "up to date"}
    assert [b for b in BRANCHES if d["after"]["models"][b] != d["before"]["models"][b]] == ["maclu"]
    assert {s for s, v in st.items() if v == "ran"} == {"train.maclu", "evaluate", "table1", "heatmaps", "ablation",
                                                        "panels", "compare", "sweep.tau", "sweep.maclu_resolution",
                                                        "report"}
    assert d["after"]["results"]["reproduce/sweeps/maclu_resolution/maclu_42.pt"] != \
        d["before"]["results"]["reproduce/sweeps/maclu_resolution/maclu_42.pt"]  # its fit config changed too


# ------------------------------------------------------------------ the report
def table(report: str, first_header: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``| first_header |``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


@pytest.fixture(scope="module")
def report(runs):
    out = runs["D"]["run"].out
    return {"text": (out / "report.md").read_text(), "out": out,
            "metrics": json.loads((out / "metrics.json").read_text())["metrics"],
            "ablation": json.loads((out / "ablation.json").read_text())}


def test_report_table1_equals_metrics_json(report):
    rows = {r[0]: r[1:] for r in table(report["text"], "method")}
    m = report["metrics"]
    assert rows["**USAD, this run**"] == [pct(m["image_auroc"]), pct(m["pixel_auroc"]), pct(m["pro_auc_usad"])]
    assert rows["USAD (fused)"] == ["98.83", "98.24", "89.88"]
    assert rows["difference (this run - paper USAD)"] == [f"{float(o) - float(p):+.2f}" for o, p in
                                                          zip(rows["**USAD, this run**"], rows["USAD (fused)"])]
    assert f"AU-PRO@0.3 of this run: {pct(m['aupro_0.3'])}" in report["text"]


def test_compare_stage_scores_this_evaluation_like_table1(report, runs):
    """The compare stage's USAD row is this run's evaluation, scored by usad.compare's harness: metrics.json's
    numbers (no backbone ran for it: see the backbone counts of the runs), and the report shows the full table."""
    row = json.loads((report["out"] / "compare" / "table1.json").read_text())["methods"]["usad"]
    m = report["metrics"]
    assert {k: row[k] for k in ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3")} == \
        {k: m[k] for k in ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3")}
    assert row["settings"]["maclu"]["tau"] == 1.2 and row["predict_s"] > 0
    full = {r[0]: r for r in table(report["text"].split("## Table 1 in full")[1], "method")}
    assert full["USAD (fused)"][1:3] == ["98.83", pct(m["image_auroc"])]


def test_report_tables_2_and_3_equal_ablation_json(report):
    a = report["ablation"]
    t2 = table(report["text"], "score")
    assert [r[0].strip("`") for r in t2] == ["s_obj", "s_pc", "s_M", "s_obj+s_pc", "s_obj+s_M", "s_pc+s_M", "s_fused"]
    for name, paper, ours, difference in t2:
        assert ours == pct(a[f"image.{name.strip('`')}"])
        assert difference == f"{float(ours) - float(paper):+.2f}"
    t3 = table(report["text"], "map")
    assert len(t3) == 7
    for name, pix_paper, pix, pix_diff, pro_paper, pro, pro_diff, aupro in t3:
        r = a[f"pixel.{name.strip('`')}"]
        assert [pix, pro, aupro] == [pct(r["pixel_auroc"]), pct(r["pro_auc_usad"]), pct(r["aupro_0.3"])]
        assert pix_diff == f"{float(pix) - float(pix_paper):+.2f}" and pro_diff == f"{float(pro) - float(pro_paper):+.2f}"


def test_report_figures_resolve_and_sweeps_match_their_csv(report):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report["text"])
    assert len(links) == 2 + 2 + 2  # Figs. 7-8, two panels, the tau and MACLU-resolution plots (MA2Patch's skipped)
    for link in links:
        assert not Path(link).is_absolute() and (report["out"] / link).is_file(), link
    tau = table(report["text"], "tau")
    csv_rows = [line.split(",") for line in (report["out"] / "sweeps" / "tau.csv").read_text().splitlines()]
    header = csv_rows[0]
    assert [r[0] for r in tau] == [row[header.index("tau")] for row in csv_rows[1:]]
    assert [r[1] for r in tau] == [pct(float(row[header.index("image_auroc")])) for row in csv_rows[1:]]
    assert "*Not computed (`--skip ma2patch_resolution`).*" in report["text"]


def test_report_says_what_it_ran_with(report, runs):
    text = report["text"]
    assert text.splitlines()[2].startswith("> **WARNING: RANDOM BACKBONE WEIGHTS (maclu, ma2patch, patchcore)")
    changed = {r[0]: r[2] for r in table(text, "key")}
    assert changed["`maclu.tau`"] == "`1.2`" and changed["`maclu.kmeans_seed`"] == "`7`"
    assert "`maclu.sigma`" not in changed  # only values that differ from the paper's
    sums = {r[0]: r[2].strip("`") for r in table(text, "branch")}
    assert sums == {b: reproduce.file_sha256(model_path(runs["cfg"], b)) for b in BRANCHES}
    stages = {r[0]: r for r in table(text, "stage")}
    assert set(stages) == set(reproduce.STAGES)
    for key in ("torch", "timm", "git commit", "device"):
        assert any(r[0] == key for r in table(text, "")), key
    assert "## Departures from the authors' code" in text and "PatchCore map blur" in text


def test_bad_skip_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--skip", "sweeps,tables"])
    assert e.value.code == 2
    assert "cannot skip 'tables'" in capsys.readouterr().err


def test_a_damaged_stamp_reruns_its_stage(runs):
    """A stamp that is not a JSON object, or lacks a field, counts as no stamp: that stage reruns, the others not.
    (Last in this module: it reruns the sequence's final config D once more.)"""
    cfg, tmp = runs["cfg"], runs["tmp"]
    stages = Path(cfg.paths.results) / cfg.data.category / "reproduce" / "stages"
    (stages / "table1.json").write_text("[1]")
    panels = json.loads((stages / "panels.json").read_text())
    del panels["seconds"]
    (stages / "panels.json").write_text(json.dumps(panels))
    sets = ["--set", "maclu.tau=1.2", "--set", "maclu.kmeans_seed=7"]  # run D's config: everything else is up to date
    run = reproduce.main(config_argv(cfg, tmp) + OPTIONS + sets)
    assert {s for s, v in statuses(run).items() if v == "ran"} == {"table1", "panels", "report"}
