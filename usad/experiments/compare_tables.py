"""``usad.compare``'s tables: ``table1.json`` (every number of every method) and ``table1.md`` (the paper's
Table 1 and this run side by side, with the differences).

Numbers in table1.json are fractions (0..1, as metrics.json); table1.md shows percentages with two
decimals, and a difference is this run minus the paper in percentage points. The paper's Table 1 is on
CoalAD; on another category its numbers are shown for reference only (the table says so).
"""

from __future__ import annotations

from pathlib import Path

from usad.core.artifacts import atomic_write
from usad.core.outputs import write_json
from usad.experiments.compare_jobs import LOCO_METRICS
from usad.experiments.report import PAPER_TABLE1

# Each method's row of the paper's Table 1 (also the adapters' ``paper_name``; kept here for the methods whose
# adapter cannot be imported on this machine, whose rows still show the paper's numbers).
PAPER_ROWS = {"usad": "USAD (fused)", "patchcore": "PatchCore", "simplenet": "SimpleNet", "draem": "DRAEM",
              "isstad": "ISSTAD", "efficientad": "EfficientAD", "rd4ad": "RD4AD", "rdpp": "RD++", "ckaad": "CKAAD"}
PAPER_METRICS = ("image_auroc", "pixel_auroc", "pro_auc_usad")   # the columns of the paper's Table 1, in order
HEADERS = {"image_auroc": "Image-AUC", "pixel_auroc": "Pixel-AUC", "pro_auc_usad": "PRO-AUC",
           "aupro_0.3": "AU-PRO@0.3", "image_auroc_logical": "AUROC logical", "image_auroc_structural": "AUROC structural",
           "image_auroc_mean": "AUROC mean", "spro_auc_0.05_logical": "AU-sPRO@0.05 logical",
           "spro_auc_0.05_structural": "AU-sPRO@0.05 structural", "spro_auc_0.05": "AU-sPRO@0.05 mean"}


COALAD = "coal_ad"  # the USAD paper's Table 1 is on CoalAD only


def paper_numbers(name: str, paper_name: str | None = None, cfg=None, category: str = COALAD,
                  layout: str = "mvtec") -> dict | None:
    """The numbers to print beside this run (in %): on CoalAD the USAD paper's Table 1 row of the method; on
    another category the method's own paper's (``Method.paper_numbers``, e.g. NPGMF's Tables I-II), or None."""
    if category == COALAD:
        row = PAPER_TABLE1.get(paper_name or PAPER_ROWS.get(name, ""))
        return dict(zip(PAPER_METRICS, row)) if row else None
    try:
        from usad.models import method_class
        return method_class(name).paper_numbers(cfg, category, layout)
    except ImportError:  # its optional packages are missing: no numbers to show
        return None


def write_table1_json(path: Path, table: dict) -> None:
    write_json(path, table)


# ------------------------------------------------------------------ table1.md
def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def seconds(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def megabytes(peaks) -> str:
    return "-" if not peaks else " / ".join("-" if peaks.get(k) is None else f"{peaks[k]:.0f}" for k in ("fit", "predict"))


def side_by_side(table: dict, coal: bool = True) -> list[str]:
    """CoalAD / MVTec AD: per method the paper's Image-, Pixel- and PRO-AUC, this run's and the difference."""
    header = ["method"]
    for m in PAPER_METRICS:
        header += [f"{HEADERS[m]} paper", "this run", "difference"]
    header += [HEADERS["aupro_0.3"], "status"]
    rows = []
    for name, row in table["methods"].items():
        paper = row.get("paper") or {}
        cells = [row.get("paper_name") or name]
        for m in PAPER_METRICS:
            ours, theirs = row.get(m), paper.get(m)
            cells += ["-" if theirs is None else f"{theirs:.2f}", pct(ours),
                      "-" if ours is None or theirs is None else f"{round(100 * ours, 2) - theirs:+.2f}"]
        rows.append(cells + [pct(row.get("aupro_0.3")), row["status"]])
    listed = {row.get("paper_name") for row in table["methods"].values()}
    for paper_name, numbers in PAPER_TABLE1.items():  # the paper's rows of methods this run did not list
        if coal and paper_name not in listed:
            rows.append([f"{paper_name} (paper only)", *(c for v in numbers for c in (f"{v:.2f}", "-", "-")), "-",
                         "not listed in --methods"])
    return md_table(header, rows).splitlines()


def loco_table(table: dict) -> list[str]:
    """MVTec LOCO: this run's metrics, each with the method's own paper's number where it gives one."""
    rows = []
    for name, row in table["methods"].items():
        paper = row.get("paper") or {}
        rows.append([row.get("paper_name") or name,
                     *(pct(row.get(m)) + ("" if paper.get(m) is None else f" (paper {paper[m]:.1f})") for m in LOCO_METRICS),
                     row["status"]])
    return md_table(["method", *(HEADERS[m] for m in LOCO_METRICS), "status"], rows).splitlines()


def cost_table(table: dict) -> list[str]:
    rows = []
    for name, row in table["methods"].items():
        if row["status"] != "ran":
            continue
        fit = "loaded (fitted earlier)" if row.get("fit") == "loaded" else seconds(row.get("train_s"))
        rows.append([row.get("paper_name") or name, fit, seconds(row.get("predict_s")),
                     "-" if row.get("images_per_s") is None else f"{row['images_per_s']:.2f}",
                     megabytes(row.get("peak_host_mb")), megabytes(row.get("peak_children_mb")),
                     megabytes(row.get("peak_gpu_mb")), row.get("device", "")])
    return md_table(["method", "train s", "predict s", "images/s", "peak host MB (fit / predict)",
                     "child processes MB", "peak GPU MB (fit / predict)", "device"], rows).splitlines() \
        if rows else ["*No method ran.*"]


def write_table1_md(path: Path, table: dict) -> None:
    coal = table["category"] == "coal_ad"
    lines = [f"# Table 1 in full: {table['category']} ({table['layout']} layout)", ""]
    if table["layout"] == "loco":
        lines += ["MVTec LOCO AD, in %: image AUROC of logical and of structural anomalies (each against every good "
                  "test image) and their mean; AU-sPRO integrated up to FPR 0.05 and divided by 0.05, per type (its "
                  "images and every good one) and their mean, at the evaluation size.", "", *loco_table(table)]
    else:
        lines += [("The paper's Table 1 (on CoalAD) and this run" if coal else
                   f"This run on {table['category']} beside each method's own paper's numbers for this category, where "
                   f"it gives them (the USAD paper's Table 1 is on CoalAD only)")
                  + ", in %; a difference is this run minus the paper. PRO-AUC is the USAD authors' variant (what the "
                  "paper reports); AU-PRO@0.3 the standard MVTec one.", "", *side_by_side(table, coal)]
    lines += ["", "## Cost", "", *cost_table(table), "",
              f"Test images: {table['n_test']}; evaluation size {table['eval_size']} px; "
              f"validation: {table['validation']}. Figures: "
              + (", ".join(f"[{Path(p).name}]({Path(p).name})" for p in table.get("figures", {}).get("files", []))
                 or "none") + ". Every number: `table1.json`.", ""]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))
