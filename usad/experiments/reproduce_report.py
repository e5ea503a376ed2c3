"""report.md of ``usad.reproduce``: every table and figure beside the paper's numbers, readable on a code host.

Rebuilt from what is on disk at every run: Table 1 (``metrics.json``), Table 1 in full (``compare/table1.json``
of ``usad.compare``, with Figs. 7-8), Tables 2-3 (``ablation.json``), Fig. 9 and the sweeps (Figs. 10-12),
the config and how it differs from the paper's, the environment, the model files' SHA-256, the wall time of
each stage, and the known departures from the authors' code with their measured size.
"""

from __future__ import annotations

import csv
import os
from datetime import datetime, timezone
from pathlib import Path

import yaml

from usad.core.artifacts import atomic_write
from usad.core.config import FREE_FORM, load_config
from usad.core.stages import describe, flat, read_json
from usad.experiments import sweep as sweeps
from usad.experiments.compare_tables import cost_table, loco_table, md_table, side_by_side
from usad.experiments.report import PAPER_TABLE1, PAPER_TABLE2, PAPER_TABLE3
from usad.models.usad.branches import BRANCHES, model_path


def random_weight_branches(cfg) -> list[str]:
    """Branches whose backbone has random weights (``pretrained: false`` and no weights file)."""
    return [b for b in BRANCHES if not cfg[b].pretrained and not cfg[b].weights]


# ------------------------------------------------------------------ the report
# Known departures from the authors' code (usad-reference.md marks each one), with their size as measured on the
# golden fixture against the authors' own code (tests/golden/README.md, "Departures").
DEPARTURES = (
    ("ViT size in training",
     "the training scripts build the ViTs at timm's default 336 (MACLU) / 224 (MA2Patch) and feed them "
     "350 / 406 px images (position embedding interpolated twice in training, once in test)",
     "each ViT is built at its branch size (350 / 406) for training and test",
     "their code as-is vs at the branch size: s_attr Pearson 0.99742, M_attr 0.99512, M_fused 0.99672, "
     "Pixel-AUC -6.9e-4, PRO-AUC +7.0e-4, Image-AUCs equal"),
    ("PatchCore map blur",
     "PIL `GaussianBlur(radius=4)` on an 8-bit copy of the map",
     "a float Gaussian, sigma 4",
     "M_pc Pearson 0.999979 (max abs 0.0112), M_fused max abs 0.0016; "
     "usad-reference.md Sec. 5: maps < 0.015, metrics < 0.0005"),
    ("Image resize",
     "`Resize(s)`: the shorter side to s",
     "`Resize((s, s))`: a square",
     "none on square images (CoalAD's, the fixture's); a square patch grid for non-square ones"),
)


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def diff(v: float, paper: float) -> str:
    return f"{round(100 * v, 2) - paper:+.2f}"


def link(path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def table1_section(out: Path) -> list[str]:
    m = (read_json(out / "metrics.json") or {}).get("metrics")
    if m is None:
        return ["## Table 1 (%): the paper on CoalAD, this run beside it", "", "*Not computed.*"]
    paper = PAPER_TABLE1["USAD (fused)"]
    ours = (m["image_auroc"], m["pixel_auroc"], m["pro_auc_usad"])
    rows = [[name, *(f"{v:.2f}" for v in vals), ""] for name, vals in PAPER_TABLE1.items()]
    rows.append(["**USAD, this run**", *(pct(v) for v in ours), ""])
    rows.append(["difference (this run - paper USAD)", *(diff(v, p) for v, p in zip(ours, paper)), ""])
    return ["## Table 1 (%): the paper on CoalAD, this run beside it", "",
            md_table(["method", "Image-AUC", "Pixel-AUC", "PRO-AUC"], [r[:4] for r in rows]), "",
            f"PRO-AUC is the authors' variant (what the paper reports). The standard MVTec AU-PRO@0.3 of this run: "
            f"{pct(m['aupro_0.3'])}. Test images: {m.get('n_test_images', '?')}. Source: `metrics.json`."]


def compare_section(run, out: Path) -> list[str]:
    """Table 1 in full: every method through ``usad.compare``'s harness, with Figs. 7-8."""
    title = "## Table 1 in full (%): every method on this split, scored by this project's metrics"
    folder = out / "compare"
    table = read_json(folder / "table1.json") if current(run, "compare") else None
    if table is None:
        return [title, "", "*Not computed (`--skip compare`).*"]
    lines = [title, "", *(loco_table(table) if table["layout"] == "loco" else side_by_side(table)), "",
             "Cost (USAD's row: the wall times of this run's train and evaluate stages):", "", *cost_table(table), "",
             f"Validation: {table['validation']}. Source: `{link(folder / 'table1.json', out)}` "
             f"(`python -m usad.compare`, README \"Table 1 in full\")."]
    for p in table.get("figures", {}).get("files", []):
        name = Path(p).stem
        lines += ["", f"![{name}]({link(folder / Path(p).name, out)})"]
    return lines


def current(run, stage: str) -> bool:
    """Whether ``stage``'s outputs on disk are this config's (it ran, or was up to date)."""
    return bool((run.records.get(stage) or {}).get("stamp"))


def ablation_sections(run, out: Path) -> list[str]:
    a = read_json(out / "ablation.json") if current(run, "ablation") else None
    if a is None:
        return ["## Tables 2 and 3: ablation (%)", "", "*Not computed (`--skip ablation`).*"]
    t2 = [[f"`{k}`", f"{p:.2f}", pct(a[f'image.{k}']), diff(a[f'image.{k}'], p)] for k, p in PAPER_TABLE2.items()]
    t3 = []
    for k, (pp, pr) in PAPER_TABLE3.items():
        r = a[f"pixel.{k}"]
        t3.append([f"`{k}`", f"{pp:.2f}", pct(r["pixel_auroc"]), diff(r["pixel_auroc"], pp),
                   f"{pr:.2f}", pct(r["pro_auc_usad"]), diff(r["pro_auc_usad"], pr), pct(r["aupro_0.3"])])
    return ["## Table 2: image-level ablation, Image-AUC (%)", "",
            md_table(["score", "paper", "this run", "difference"], t2), "",
            "## Table 3: pixel-level ablation (%)", "",
            md_table(["map", "Pixel-AUC paper", "Pixel-AUC this run", "difference", "PRO-AUC paper",
                      "PRO-AUC this run", "difference", "AU-PRO@0.3 this run"], t3), "",
            "Definitions: README, \"Ablation definitions\". Source: `ablation.json`."]


def figures_section(run, out: Path) -> list[str]:
    lines = ["## Fig. 9: input | ground truth | M_obj | M_attr | M_pc | fused", ""]
    panels = (run.records.get("panels", {}).get("stamp") or {}).get("wrote", {})
    lines += [f"![{Path(p).stem}]({link(p, out)})" for p in panels] or ["*No panels (`--skip panels`).*"]
    for s in ("maclu_resolution", "ma2patch_resolution", "tau"):
        stamp = run.records.get(f"sweep.{s}", {}).get("stamp")
        lines += ["", f"## {sweeps.FIGURE[s]}: {s.replace('_', ' ')}", ""]
        csv_path = out / "sweeps" / f"{s}.csv"
        if not stamp or not csv_path.is_file():
            lines.append(f"*Not computed (`--skip {s}`).*")
            continue
        lines.append(f"![{sweeps.FIGURE[s]}]({link(out / 'sweeps' / f'{s}.png', out)})")
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        x = "tau" if s == "tau" else "image_size"
        extra = [] if s == "tau" else [("branch_image_auroc", "branch Image-AUC"), ("branch_pixel_auroc", "branch Pixel-AUC"),
                                       ("branch_pro_auc_usad", "branch PRO-AUC")]
        cols = [("image_auroc", "Image-AUC"), ("pixel_auroc", "Pixel-AUC"), ("pro_auc_usad", "PRO-AUC"), *extra]
        table = [[r[x], *(pct(float(r[k])) for k, _ in cols),
                  *([] if s == "tau" else [f"{float(r['throughput_img_s']):.1f}"])] for r in rows]
        lines += ["", md_table([x, *(c for _, c in cols), *([] if s == "tau" else ["images/s"])], table), "",
                  f"Paper: {PAPER_SWEEPS[s]}. Source: `{link(csv_path, out)}`."]
    return lines


PAPER_SWEEPS = {"maclu_resolution": "224..504, best near 350", "ma2patch_resolution": "~304..420, PRO-AUC best at 406",
                "tau": "1.05..1.25, best at 1.14"}


def config_section(run, out: Path) -> list[str]:
    cfg_path = run.state / "config.yaml"
    atomic_write(cfg_path, lambda tmp: tmp.write_text(yaml.safe_dump(run.cfg.to_dict(), sort_keys=False)))
    paper, ours = flat(load_config(None).to_dict(), keep=FREE_FORM), flat(run.cfg.to_dict(), keep=FREE_FORM)
    changed = [[f"`{k}`", f"`{paper.get(k)!r}`", f"`{ours.get(k)!r}`"] for k in ours if ours.get(k) != paper.get(k)]
    return ["## Configuration", "", f"The whole config: [{link(cfg_path, out)}]({link(cfg_path, out)}). "
            "Values that differ from the paper defaults (`configs/coalad.yaml`):", "",
            md_table(["key", "paper default", "this run"], changed) if changed else "*None: the paper's defaults.*"]


def environment_section(run) -> list[str]:
    env = run.env
    return ["## Environment", "",
            md_table(["", ""], [["device", f"{env['device']} ({env['device_name']})"],
                                ["git commit", f"`{env['commit']}`"], ["platform", env["platform"]],
                                *[[k, v] for k, v in env["versions"].items()]]), "",
            "This is the environment of the run that wrote this report; each stage's own is in the table of stages."]


def models_section(run) -> list[str]:
    rows = []
    for b in BRANCHES:
        stamp = run.records[f"train.{b}"]["stamp"]
        rows.append([b, f"`{model_path(run.cfg, b)}`", f"`{stamp['sha256']}`", stamp.get("finished", "")])
    return ["## Model files", "", md_table(["branch", "file", "SHA-256", "written or adopted"], rows)]


def stages_section(run) -> list[str]:
    rows = []
    for name, rec in run.records.items():  # in the order they ran
        stamp = rec.get("stamp") or {}
        seconds = rec.get("seconds", stamp.get("seconds"))
        rows.append([name, rec["status"], "-" if seconds is None else f"{seconds:.1f}",
                     stamp.get("finished", ""), stamp.get("device_name", ""), f"`{stamp.get('commit', '')[:12]}`" if stamp else "",
                     describe(list(stamp.get("wrote", {})), run.out) if stamp else ""])
    return ["## Stages and wall time", "",
            md_table(["stage", "this run", "wall time (s) when computed", "computed", "device", "commit", "wrote"], rows)]


def departures_section() -> list[str]:
    rows = [[what, authors, ours, size] for what, authors, ours, size in DEPARTURES]
    return ["## Departures from the authors' code", "",
            md_table(["what", "authors' code", "this project", "measured size (golden fixture, authors' code)"], rows), "",
            "Sizes from `tests/golden/README.md` (the authors' code run on the committed fixture); every other "
            "output agrees with theirs within the golden thresholds (scores and maps Pearson >= 0.999, metrics "
            "within 0.005: `tests/test_golden.py`)."]


def write_report(path: Path, run) -> None:
    """report.md: everything readable on a code host, figures linked relative to it."""
    out = path.parent
    lines = [f"# USAD on {run.cfg.data.category}: this run beside the paper", ""]
    rand = random_weight_branches(run.cfg)
    if rand:
        lines += [f"> **WARNING: RANDOM BACKBONE WEIGHTS ({', '.join(rand)}).** `pretrained: false` and no `weights` "
                  "file: these numbers say nothing about USAD's detection quality, only that the pipeline runs.", ""]
    lines += [f"Written by `python -m usad.reproduce` on {datetime.now(timezone.utc).isoformat(timespec='seconds')}. "
              "Numbers in %, two decimals; a difference is this run minus the paper (percentage points).", ""]
    for section in (table1_section(out), compare_section(run, out), ablation_sections(run, out), figures_section(run, out), config_section(run, out),
                    environment_section(run), models_section(run), stages_section(run), departures_section()):
        lines += section + [""]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))


