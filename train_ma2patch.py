"""Train MA2Patch, the semantic attribution branch (Sec. 4.3): Gaussian of mean-pooled DINOv2 ViT-B/14 patch tokens.

    python train_ma2patch.py --config configs/coalad.yaml [--set KEY=VALUE ...]

Writes <paths.models>/<data.category>/ma2patch.pt.
"""

import argparse
import sys

from usad.config import add_config_args, config_from_args
from usad.pipeline import run_cli, train_branch


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    train_branch("ma2patch", config_from_args(args))


if __name__ == "__main__":
    sys.exit(run_cli(main))
