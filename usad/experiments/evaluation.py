"""Evaluation and its report: predictions -> Table 1 metrics, Tables 2-3, heatmaps, Fig. 9 panels.

Shared by ``test_fusion.py``, ``python -m usad.run`` and ``python -m usad.reproduce``:
``evaluate_and_report`` runs the test set through the three branches (loaded from their model
files, or the fitted objects passed in) and writes what ``test_fusion.py`` always wrote;
``report_predictions`` does the same from predictions already in memory.
"""

from __future__ import annotations

import argparse
import logging
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch

from usad.core import metrics
from usad.experiments.ablation import ablation as ablation_tables, format_ablation
from usad.core.backbones import resolve_device
from usad.belt.decisions import format_operating_point, operating_point_section
from usad.core.panels import save_panels
from usad.models.usad.fusion import fuse, to_eval_size
from usad.models.usad.maclu import object_map
from usad.core.paths import category_dir, results_dir
from usad.models.usad.inference import Predictions, evaluate, metric_device
from usad.core.outputs import write_json
from usad.experiments.report import save_heatmaps, save_predictions as write_predictions, table1

log = logging.getLogger("usad")


def image_count(text: str) -> str:
    """argparse type of --heatmaps / --panels: a number of images >= 0, or ``all``."""
    if text == "all" or (text.isdigit() and text.isascii()):
        return text
    raise argparse.ArgumentTypeError(f"expected a number of images (0, 1, 2, ...) or 'all', got {text!r}")


def pick_images(labels: np.ndarray, how: str) -> list[int]:
    """``all``, or N images taken alternately anomalous / normal (anomalous first; when one kind runs
    out the other fills in), each kind in evaluation order; returned in evaluation order."""
    if how == "all":
        return list(range(len(labels)))
    anomalous, normal = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    alternating = [int(i) for pair in zip_longest(anomalous, normal) for i in pair if i is not None]
    return sorted(alternating[:int(how)])


def add_evaluation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The evaluation options of ``test_fusion.py`` (also taken by ``python -m usad.run``)."""
    parser.add_argument("--save-predictions", metavar="FILE.npz", help="write every score and map (evaluation size) to FILE.npz")
    parser.add_argument("--heatmaps", default="8", type=image_count,
                        help="number of fused-map overlays to save, half anomalous and half normal images, or 'all' (default 8)")
    parser.add_argument("--panels", default="4", type=image_count,
                        help="number of Fig. 9-style panels to save, half anomalous and half normal images, or 'all' (default 4)")
    parser.add_argument("--ablation", action="store_true", help="also compute Tables 2 and 3 (ablation.json)")
    return parser


def maclu_maps(preds, fg: int, cfg, tau: float | None = None) -> np.ndarray:
    """M_obj of every test image at the evaluation size for another tau (default: the config's), from the
    MACLU ratios an evaluation stored (``evaluate(..., keep_ratios=True)``): Eq. 7-8, no backbone."""
    device = resolve_device(cfg.device)
    tau = cfg.maclu.tau if tau is None else tau
    r, labels = preds.extras["maclu_r"], preds.extras["maclu_labels"]
    out = np.empty((len(r), cfg.data.eval_size, cfg.data.eval_size), np.float32)
    for a in range(0, len(r), cfg.data.batch_size):
        b = slice(a, a + cfg.data.batch_size)
        m = object_map(torch.from_numpy(r[b]).to(device), torch.from_numpy(labels[b]).to(device), fg, tau, cfg.maclu)
        out[b] = to_eval_size(m, cfg.data.eval_size).cpu().numpy()
    return out


def with_tau(preds, fg: int, cfg, tau: float | None = None) -> Predictions:
    """The predictions of an evaluation redone from its stored MACLU ratios for ``tau`` (default: the
    config's) and the config's fusion: M_obj (Eq. 7-8), then fusion (Eq. 21-23); no backbone runs."""
    device = resolve_device(cfg.device)
    m_obj = maclu_maps(preds, fg, cfg, tau)
    n = len(preds.label)
    out = Predictions(files=list(preds.files), label=preds.label, mask=preds.mask, extras=preds.extras,
                      scores={k: preds.scores[k] for k in ("s_obj", "s_attr", "s_pc")},
                      maps={"m_obj": m_obj, "m_attr": preds.maps["m_attr"], "m_pc": preds.maps["m_pc"],
                            "m_fused": np.empty_like(m_obj)})
    out.scores["s_fused"], out.scores["s_M"] = np.empty(n, np.float32), np.empty(n, np.float32)
    for a in range(0, n, cfg.data.batch_size):
        b = slice(a, a + cfg.data.batch_size)
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x[b])).to(device)
        s, m, product = fuse(t(out.scores["s_obj"]), t(out.scores["s_pc"]), t(m_obj), t(out.maps["m_attr"]),
                             t(out.maps["m_pc"]), cfg.fusion)  # Eq. 21-23, on the device as in evaluation
        out.scores["s_fused"][b], out.maps["m_fused"][b] = s.cpu().numpy(), m.cpu().numpy()
        out.scores["s_M"][b] = product.flatten(1).max(1).values.cpu().numpy()
    return out


def table1_metrics(preds, device=None) -> dict:
    """Table 1 of the fused detector, plus each branch's own Image-AUC and the test-set size (pixel metrics on
    ``device``, default NumPy on the host)."""
    result = metrics.compute_all(preds.label, preds.scores["s_fused"], preds.mask, preds.maps["m_fused"], device=device)
    result["image_auroc_branches"] = {k: metrics.image_auroc(preds.label, preds.scores[k]) for k in ("s_obj", "s_attr", "s_pc")}
    result["n_test_images"] = int(len(preds.label))
    return result


def write_metrics(cfg, preds) -> dict:
    """metrics.json (Table 1, the operating-point section when one is calibrated, and the run's config) and
    the printed tables."""
    result = table1_metrics(preds, metric_device(cfg))
    decisions = operating_point_section(cfg, preds)  # None without <paths.models>/<category>/operating_point.json
    if decisions is not None:
        result["operating_point"] = decisions
    out = results_dir(cfg)
    write_json(out / "metrics.json", {"metrics": result, "config": cfg.to_dict()})
    print(table1(result))
    if decisions is not None:
        print(format_operating_point(decisions))
    log.info("metrics written to %s", out / "metrics.json")
    return result


def write_ablation(cfg, preds) -> dict:
    """ablation.json (Tables 2 and 3) and the printed tables."""
    out = results_dir(cfg)
    table = ablation_tables(preds, cfg.fusion, metric_device(cfg))
    write_json(out / "ablation.json", table)
    print(format_ablation(table))
    log.info("ablation written to %s", out / "ablation.json")
    return table


def write_heatmaps(cfg, preds, how: str = "8") -> list[Path]:
    """Fused-map overlays of ``how`` test images (see ``pick_images``) in heatmaps/."""
    out = results_dir(cfg) / "heatmaps"
    written = save_heatmaps(out, category_dir(cfg), preds, pick_images(preds.label, how))
    log.info("%d heatmap overlays in %s", len(written), out)
    return written


def write_panels(cfg, preds, how: str = "4") -> list[Path]:
    """Fig. 9 panels of ``how`` test images (see ``pick_images``) in panels/."""
    out = results_dir(cfg) / "panels"
    written = save_panels(out, category_dir(cfg), preds, pick_images(preds.label, how))
    log.info("%d panels in %s", len(written), out)
    return written


def report_predictions(cfg, preds, *, save_predictions: str | Path | None = None, heatmaps: str = "8",
                       panels: str = "4", ablation: bool = False) -> dict:
    """metrics.json and the printed Table 1 (and with ``ablation`` Tables 2-3, ablation.json), the
    predictions NPZ when asked, heatmap overlays and Fig. 9 panels, from one evaluation's predictions."""
    result = write_metrics(cfg, preds)
    if ablation:
        result["ablation"] = write_ablation(cfg, preds)
    if save_predictions:
        write_predictions(save_predictions, preds)
        log.info("predictions written to %s", save_predictions)
    write_heatmaps(cfg, preds, heatmaps)
    write_panels(cfg, preds, panels)
    return result


def evaluate_and_report(cfg, branches: dict | None = None, *, save_predictions: str | Path | None = None,
                        heatmaps: str = "8", panels: str = "4", ablation: bool = False) -> dict:
    """Evaluate the three branches (``branches``: fitted objects; default: loaded from their model
    files) and write everything ``test_fusion.py`` writes; returns the metrics."""
    preds = evaluate(cfg, branches)
    return report_predictions(cfg, preds, save_predictions=save_predictions, heatmaps=heatmaps,
                              panels=panels, ablation=ablation)
