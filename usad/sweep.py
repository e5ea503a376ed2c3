"""Sensitivity studies of the paper (Figs. 10, 11, 12), one CSV and one PNG per sweep.

    python -m usad.sweep --config configs/coalad.yaml --sweep tau                  # Fig. 12
    python -m usad.sweep --config configs/coalad.yaml --sweep maclu_resolution     # Fig. 10
    python -m usad.sweep --config configs/coalad.yaml --sweep ma2patch_resolution  # Fig. 11
    python -m usad.sweep ... --sweep all [--values 1.1,1.14,1.2]

- tau only changes MACLU's post-processing (Eq. 7): the test set goes through
  the backbones once and every tau reuses the stored per-patch ratios.
- A resolution point refits that branch at the new size (the others are the
  trained models from saved_models/) and reports its throughput (test images
  per second through the branch's backbone) next to the metrics.
Output: <paths.results>/<category>/sweeps/<sweep>.csv and .png.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .artifacts import atomic_write
from .backbones import resolve_device
from .config import add_config_args, config_from_args, with_overrides
from .fusion import fuse, to_eval_size
from .pipeline import evaluate, fit_branch, load_branches, results_dir, run_cli

log = logging.getLogger("usad")

DEFAULT_VALUES = {
    "tau": [1.05, 1.07, 1.09, 1.11, 1.13, 1.14, 1.15, 1.17, 1.19, 1.21, 1.23, 1.25],
    "maclu_resolution": [224, 266, 308, 350, 392, 434, 476, 504],
    "ma2patch_resolution": [308, 336, 364, 392, 406, 420],
}
BRANCH_OF = {"maclu_resolution": "maclu", "ma2patch_resolution": "ma2patch"}
FIGURE = {"tau": "Fig. 12", "maclu_resolution": "Fig. 10", "ma2patch_resolution": "Fig. 11"}


def fused_metrics(label, mask, s_obj, s_pc, m_obj, m_attr, m_pc, fusion_cfg, chunk: int = 16) -> dict:
    """Fuse stored branch outputs (maps at the evaluation size) and score the result."""
    s_fused = np.empty(len(label), np.float32)
    m_fused = np.empty_like(m_attr)
    for a in range(0, len(label), chunk):
        b = slice(a, a + chunk)
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x[b]))
        s, m, _ = fuse(t(s_obj), t(s_pc), t(m_obj), t(m_attr), t(m_pc), fusion_cfg)
        s_fused[b], m_fused[b] = s.numpy(), m.numpy()
    return metrics.compute_all(label, s_fused, mask, m_fused)


def sweep_tau(cfg, values, branches: dict | None = None) -> list[dict]:
    """Fig. 12: one pass through the backbones, then every tau from the stored MACLU ratios."""
    device = resolve_device(cfg.device)
    branches = branches or load_branches(cfg, device)
    preds = evaluate(cfg, branches, keep_ratios=True)
    maclu, size = branches["maclu"], cfg.data.eval_size
    r, labels = preds.extras["maclu_r"], preds.extras["maclu_labels"]
    rows = []
    for tau in values:
        m_obj = np.empty_like(preds.maps["m_attr"])
        for a in range(0, len(r), cfg.data.batch_size):
            b = slice(a, a + cfg.data.batch_size)
            m = maclu.map_from_ratios(torch.from_numpy(r[b]).to(device), torch.from_numpy(labels[b]).to(device), tau)
            m_obj[b] = to_eval_size(m, size).cpu().numpy()
        row = {"tau": tau, **fused_metrics(preds.label, preds.mask, preds.scores["s_obj"], preds.scores["s_pc"],
                                           m_obj, preds.maps["m_attr"], preds.maps["m_pc"], cfg.fusion)}
        log.info("tau=%.3f: %s", tau, {k: round(v, 4) for k, v in row.items() if k != "tau"})
        rows.append(row)
    return rows


def sweep_resolution(cfg, sweep: str, values, branches: dict | None = None) -> list[dict]:
    """Figs. 10 / 11: refit one ViT branch per resolution, evaluate the fusion, time the branch."""
    branch = BRANCH_OF[sweep]
    device = resolve_device(cfg.device)
    fixed = branches or load_branches(cfg, device)
    rows = []
    for size in values:
        point_cfg = with_overrides(cfg, f"{branch}.image_size={int(size)}")
        model = fit_branch(branch, point_cfg, device)
        preds = evaluate(point_cfg, {**fixed, branch: model})
        score_key, map_key = ("s_obj", "m_obj") if branch == "maclu" else ("s_attr", "m_attr")
        row = {"image_size": int(size), "throughput_img_s": len(preds.label) / max(preds.seconds[branch], 1e-9),
               **metrics.compute_all(preds.label, preds.scores["s_fused"], preds.mask, preds.maps["m_fused"]),
               "branch_image_auroc": metrics.image_auroc(preds.label, preds.scores[score_key]),
               "branch_pixel_auroc": metrics.pixel_auroc(preds.mask, preds.maps[map_key]),
               "branch_pro_auc_usad": metrics.pro_auc_usad(preds.mask, preds.maps[map_key], preds.label)}
        log.info("%s=%d: %s", f"{branch}.image_size", size, {k: round(v, 4) for k, v in row.items()})
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue()))


def plot(path: Path, rows: list[dict], x: str, title: str) -> None:
    """Metrics (%) against the swept value; throughput on a second axis when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r[x] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key, label in (("image_auroc", "Image-AUC"), ("pixel_auroc", "Pixel-AUC"), ("pro_auc_usad", "PRO-AUC")):
        ax.plot(xs, [100 * r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel(x)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if "throughput_img_s" in rows[0]:
        ax2 = ax.twinx()
        ax2.plot(xs, [r["throughput_img_s"] for r in rows], "k--", marker="s", label="images/s")
        ax2.set_ylabel("images / s")
        ax2.legend(loc="lower right")
    ax.legend(loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def run_sweep(cfg, sweep: str, values=None, branches: dict | None = None) -> list[dict]:
    values = values or DEFAULT_VALUES[sweep]
    rows = sweep_tau(cfg, values, branches) if sweep == "tau" else sweep_resolution(cfg, sweep, values, branches)
    out = results_dir(cfg) / "sweeps"
    write_csv(out / f"{sweep}.csv", rows)
    plot(out / f"{sweep}.png", rows, "tau" if sweep == "tau" else "image_size", f"{FIGURE[sweep]}: {sweep}")
    log.info("%s: %s and %s", sweep, out / f"{sweep}.csv", out / f"{sweep}.png")
    return rows


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--sweep", choices=[*DEFAULT_VALUES, "all"], default="all")
    parser.add_argument("--values", help="comma-separated values (default: the paper's ranges)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    values = [float(v) for v in args.values.split(",")] if args.values else None
    for sweep in (DEFAULT_VALUES if args.sweep == "all" else [args.sweep]):
        run_sweep(cfg, sweep, values)


if __name__ == "__main__":
    sys.exit(run_cli(main))
