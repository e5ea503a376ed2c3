"""Evaluate USAD: load the three trained branches, fuse them (Sec. 4.5), report Table 1.

    python test_fusion.py --config configs/coalad.yaml [--set KEY=VALUE ...]
                          [--save-predictions FILE.npz] [--heatmaps N|all] [--panels N|all] [--ablation]

Prints the paper's Table 1 with this run beside it and writes
<paths.results>/<data.category>/metrics.json, heatmaps/ (fused-map overlays)
and panels/ (Fig. 9-style input | ground truth | M_obj | M_attr | M_pc | fused),
for N test images (default 8 overlays, 4 panels): half anomalous, half normal.
With --ablation, also Tables 2 and 3 (ablation.json), from the same branch
outputs: no backbone runs again.
"""

import argparse
import logging
import sys
from itertools import zip_longest

import numpy as np

from usad import metrics
from usad.ablation import ablation, format_ablation
from usad.config import add_config_args, config_from_args
from usad.figures import save_panels
from usad.pipeline import category_dir, evaluate, results_dir, run_cli
from usad.report import save_heatmaps, save_predictions, table1, write_json

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


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--save-predictions", metavar="FILE.npz", help="write every score and map (evaluation size) to FILE.npz")
    parser.add_argument("--heatmaps", default="8", type=image_count,
                        help="number of fused-map overlays to save, half anomalous and half normal images, or 'all' (default 8)")
    parser.add_argument("--panels", default="4", type=image_count,
                        help="number of Fig. 9-style panels to save, half anomalous and half normal images, or 'all' (default 4)")
    parser.add_argument("--ablation", action="store_true", help="also compute Tables 2 and 3 (ablation.json)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    preds = evaluate(cfg)
    result = metrics.compute_all(preds.label, preds.scores["s_fused"], preds.mask, preds.maps["m_fused"])
    result["image_auroc_branches"] = {k: metrics.image_auroc(preds.label, preds.scores[k]) for k in ("s_obj", "s_attr", "s_pc")}
    result["n_test_images"] = int(len(preds.label))

    out = results_dir(cfg)
    write_json(out / "metrics.json", {"metrics": result, "config": cfg.to_dict()})
    print(table1(result))
    log.info("metrics written to %s", out / "metrics.json")
    if args.ablation:
        table = ablation(preds, cfg.fusion)
        write_json(out / "ablation.json", table)
        print(format_ablation(table))
        result["ablation"] = table
        log.info("ablation written to %s", out / "ablation.json")
    if args.save_predictions:
        save_predictions(args.save_predictions, preds)
        log.info("predictions written to %s", args.save_predictions)
    root = category_dir(cfg)
    written = save_heatmaps(out / "heatmaps", root, preds, pick_images(preds.label, args.heatmaps))
    log.info("%d heatmap overlays in %s", len(written), out / "heatmaps")
    written = save_panels(out / "panels", root, preds, pick_images(preds.label, args.panels))
    log.info("%d panels in %s", len(written), out / "panels")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
