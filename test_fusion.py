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
import sys

from usad.core.config import add_config_args, config_from_args
from usad.experiments.evaluation import add_evaluation_args, evaluate_and_report, image_count, pick_images  # noqa: F401 (re-exported)
from usad.core.cli import run_cli


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = add_evaluation_args(parser).parse_args(argv)
    return evaluate_and_report(config_from_args(args), save_predictions=args.save_predictions, heatmaps=args.heatmaps,
                               panels=args.panels, ablation=args.ablation)


if __name__ == "__main__":
    sys.exit(run_cli(main))
