"""Sensitivity studies of the paper (Figs. 10, 11, 12), one CSV and one PNG per sweep.

    python -m usad.sweep --config configs/coalad.yaml --sweep tau                  # Fig. 12
    python -m usad.sweep --config configs/coalad.yaml --sweep maclu_resolution     # Fig. 10
    python -m usad.sweep --config configs/coalad.yaml --sweep ma2patch_resolution  # Fig. 11
    python -m usad.sweep --config configs/coalad.yaml --sweep tau --values 1.1,1.14,1.2
    python -m usad.sweep --config configs/coalad.yaml --sweep all                  # all three, the paper's values

- tau only changes MACLU's post-processing (Eq. 7): the test set goes through
  the backbones once and every tau reuses the stored per-patch ratios.
- A resolution point refits that branch at the new size (the others are the
  trained models from saved_models/) and reports its throughput next to the
  metrics: test images per second through that branch's backbone forward pass
  alone (no data loading, resizing, heads or feature cache), timed on its own
  pass over up to THROUGHPUT_BATCHES test batches after one untimed warm-up batch.
- Every value is checked before anything runs: a resolution must be a whole
  multiple of the ViT's patch size (14 for the DINOv2 backbones, read from the
  built model). --values applies to one sweep; with --sweep all each sweep
  uses the paper's values.
Output: <paths.results>/<category>/sweeps/<sweep>.csv and .png, both rewritten
(atomically) after every point, so an interrupted sweep keeps its finished rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

from usad.core import metrics
from usad.core.artifacts import atomic_write
from usad.core.backbones import check_patch_multiple, resolve_device
from usad.core.config import add_config_args, config_from_args, with_overrides
from usad.core.data.dataset import TestDataset, make_loader
from usad.core.errors import UsadError
from usad.experiments.evaluation import with_tau
from usad.core.ops import resize_images
from usad.core.cli import run_cli
from usad.core.paths import category_dir, results_dir
from usad.models.usad.branches import fit_branch, load_branches
from usad.models.usad.inference import evaluate, metric_device

log = logging.getLogger("usad")

DEFAULT_VALUES = {
    "tau": [1.05, 1.07, 1.09, 1.11, 1.13, 1.14, 1.15, 1.17, 1.19, 1.21, 1.23, 1.25],
    "maclu_resolution": [224, 266, 308, 350, 392, 434, 476, 504],
    "ma2patch_resolution": [308, 336, 364, 392, 406, 420],
}
BRANCH_OF = {"maclu_resolution": "maclu", "ma2patch_resolution": "ma2patch"}
BRANCH_NAME = {"maclu": "MACLU", "ma2patch": "MA2Patch"}
FIGURE = {"tau": "Fig. 12", "maclu_resolution": "Fig. 10", "ma2patch_resolution": "Fig. 11"}
THROUGHPUT_BATCHES = 8  # timed test batches per resolution point (after one untimed warm-up batch)


class SweepError(UsadError, ValueError):
    """Sweep values or options that cannot run; raised before any point is computed."""


# ------------------------------------------------------------------ values
def parse_values(text: str) -> list[float]:
    """``--values 1.1,1.14,1.2`` -> [1.1, 1.14, 1.2] (argparse type: a bad list is a usage error)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 1.1,1.14,1.2; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def swept_backbone(branches: dict, sweep: str) -> tuple[int | None, str]:
    """The patch size (from the built model) and name of the ViT a resolution sweep refits (None, "" for tau)."""
    if sweep not in BRANCH_OF:
        return None, ""
    branch = branches[BRANCH_OF[sweep]]
    return branch.backbone.patch_size, branch.cfg.backbone


def check_values(sweep: str, values, patch: int | None, backbone: str = "") -> list:
    """The sweep's values, checked before any compute: finite taus; resolutions that are whole
    multiples of the branch ViT's (``backbone``) patch size ``patch`` (a square grid of whole patches)."""
    if not values:
        raise SweepError(f"--sweep {sweep}: no values given")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise SweepError(f"--sweep {sweep}: value {bad[0]} is not a finite number")
    if sweep == "tau":
        return [float(v) for v in values]
    branch = BRANCH_OF[sweep]
    for v in values:
        if v != int(v) or v < patch:
            raise SweepError(f"--sweep {sweep}: {branch}.image_size = {v:g} in --values is not a whole number of "
                             f"pixels >= the patch size {patch}")
        check_patch_multiple(int(v), patch, backbone, branch)  # the backbone's own check, before any point runs
    return [int(v) for v in values]


# ------------------------------------------------------------------ points
def fused_metrics(preds, fg: int, cfg, tau: float) -> dict:
    """Table 1's metrics of the fusion redone for ``tau`` from an evaluation's stored MACLU ratios
    (``evaluation.with_tau``: Eq. 7-8, then Eq. 21-23; no backbone runs)."""
    p = with_tau(preds, fg, cfg, tau)
    return metrics.compute_all(p.label, p.scores["s_fused"], p.mask, p.maps["m_fused"], device=metric_device(cfg))


def tau_points(cfg, values, preds, fg: int) -> Iterator[dict]:
    """Fig. 12: every tau from the MACLU ratios stored by one pass through the backbones
    (``evaluate(..., keep_ratios=True)``; ``fg``: MACLU's foreground cluster)."""
    for tau in values:
        row = {"tau": tau, **fused_metrics(preds, fg, cfg, tau)}
        log.info("tau=%.3f: %s", tau, {k: round(v, 4) for k, v in row.items() if k != "tau"})
        yield row


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def backbone_throughput(model, cfg, device: torch.device, n_batches: int = THROUGHPUT_BATCHES) -> float:
    """Test images per second through ``model``'s backbone forward pass alone, at its input size.

    Its own pass over the first ``n_batches`` test batches (the feature cache is not consulted);
    the first batch also runs once untimed, as warm-up. Only the forward call is timed."""
    dataset = TestDataset(category_dir(cfg), cfg.data.eval_size)
    loader = make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers, device)
    seconds, n_images = 0.0, 0
    for k, batch in enumerate(loader):
        if k == n_batches:
            break
        x = resize_images(batch["image"].to(device), model.cfg.image_size)
        if k == 0:  # warm-up: allocations, kernel selection
            model.backbone(x)
            _synchronize(device)
        t0 = time.perf_counter()
        model.backbone(x)
        _synchronize(device)
        seconds += time.perf_counter() - t0
        n_images += len(x)
    return n_images / max(seconds, 1e-9)


def resolution_points(cfg, sweep: str, values, branches: dict, fit=fit_branch) -> Iterator[dict]:
    """Figs. 10 / 11: refit one ViT branch per resolution, evaluate the fusion, time the branch's backbone.
    ``fit(branch, point_cfg, device)`` gives the fitted branch of a point (``usad.reproduce`` reuses saved ones)."""
    branch = BRANCH_OF[sweep]
    device = resolve_device(cfg.device)
    score_key, map_key = ("s_obj", "m_obj") if branch == "maclu" else ("s_attr", "m_attr")
    mdev = metric_device(cfg)
    for i, size in enumerate(values):
        point_cfg = with_overrides(cfg, f"{branch}.image_size={int(size)}")
        model = fit(branch, point_cfg, device)
        preds = evaluate(point_cfg, {**branches, branch: model}, check=i == 0)  # the same test split at every point
        row = {"image_size": int(size), "throughput_img_s": backbone_throughput(model, point_cfg, device),
               **metrics.compute_all(preds.label, preds.scores["s_fused"], preds.mask, preds.maps["m_fused"], device=mdev),
               "branch_image_auroc": metrics.image_auroc(preds.label, preds.scores[score_key]),
               "branch_pixel_auroc": metrics.pixel_auroc(preds.mask, preds.maps[map_key], device=mdev),
               "branch_pro_auc_usad": metrics.pro_auc_usad(preds.mask, preds.maps[map_key], preds.label, device=mdev)}
        log.info("%s=%d: %s", f"{branch}.image_size", size, {k: round(v, 4) for k, v in row.items()})
        yield row


# ------------------------------------------------------------------ output
def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue()))


METRIC_LINES = (("image_auroc", "Image-AUC"), ("pixel_auroc", "Pixel-AUC"), ("pro_auc_usad", "PRO-AUC"))


def figure(rows: list[dict], x: str, title: str, branch: str | None = None):
    """Metrics (%) against the swept value: fused (solid), branch alone (dotted, resolution sweeps),
    throughput on a second axis; one legend below the axes, clear of the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r[x] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for colour, (key, label) in enumerate(METRIC_LINES):
        ax.plot(xs, [100 * r[key] for r in rows], f"C{colour}-", marker="o", label=f"{label} (fused)")
        if f"branch_{key}" in rows[0]:
            ax.plot(xs, [100 * r[f"branch_{key}"] for r in rows], f"C{colour}:", marker="x",
                    label=f"{label} ({BRANCH_NAME.get(branch, 'branch')} alone)")
    ax.set_xlabel(x)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "throughput_img_s" in rows[0]:
        ax2 = ax.twinx()
        ax2.plot(xs, [r["throughput_img_s"] for r in rows], "k--", marker="s", label="images/s (backbone)")
        ax2.set_ylabel("images / s")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot(path: Path, rows: list[dict], x: str, title: str, branch: str | None = None) -> None:
    import matplotlib.pyplot as plt

    fig = figure(rows, x, title, branch)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))  # "tight" keeps the legend
    plt.close(fig)


def save_sweep(cfg, sweep: str, rows: list[dict]) -> list[Path]:
    """``<paths.results>/<category>/sweeps/<sweep>.csv`` and ``.png`` of the rows so far."""
    out = results_dir(cfg) / "sweeps"
    paths = [out / f"{sweep}.csv", out / f"{sweep}.png"]
    write_csv(paths[0], rows)
    plot(paths[1], rows, "tau" if sweep == "tau" else "image_size", f"{FIGURE[sweep]}: {sweep}", BRANCH_OF.get(sweep))
    return paths


def run_sweep(cfg, sweep: str, values=None, branches: dict | None = None) -> list[dict]:
    """One sweep (default: the paper's values); the CSV and PNG are rewritten after every point."""
    branches = branches or load_branches(cfg, resolve_device(cfg.device))
    values = check_values(sweep, DEFAULT_VALUES[sweep] if values is None else values, *swept_backbone(branches, sweep))
    if sweep == "tau":
        points = tau_points(cfg, values, evaluate(cfg, branches, keep_ratios=True), branches["maclu"].fg)
    else:
        points = resolution_points(cfg, sweep, values, branches)
    rows = []
    for row in points:
        rows.append(row)
        paths = save_sweep(cfg, sweep, rows)
    log.info("%s: %s and %s", sweep, *paths)
    return rows


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--sweep", choices=[*DEFAULT_VALUES, "all"], default="all")
    parser.add_argument("--values", type=parse_values,
                        help="comma-separated values for one --sweep (default: the paper's range)")
    args = parser.parse_args(argv)
    if args.values and args.sweep == "all":
        raise SweepError("--values applies to one sweep (taus and image sizes differ): give --sweep tau, "
                         "maclu_resolution or ma2patch_resolution with it, or drop --values to run all three "
                         "at the paper's values")
    cfg = config_from_args(args)
    branches = load_branches(cfg, resolve_device(cfg.device))
    sweeps = list(DEFAULT_VALUES) if args.sweep == "all" else [args.sweep]
    plan = {s: check_values(s, args.values or DEFAULT_VALUES[s], *swept_backbone(branches, s)) for s in sweeps}  # all before any runs
    for sweep, values in plan.items():
        run_sweep(cfg, sweep, values, branches)


if __name__ == "__main__":
    sys.exit(run_cli(main))
