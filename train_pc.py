"""Train PatchCore, the texture branch (Sec. 4.4): WRN50-2 layer2+3 memory bank with a greedy coreset.

    python train_pc.py --config configs/coalad.yaml [--set KEY=VALUE ...]

Writes <paths.models>/<data.category>/patchcore.pt.
"""

import argparse
import sys

from usad.config import add_config_args, config_from_args
from usad.pipeline import run_cli, train_branch


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    train_branch("patchcore", config_from_args(args))


if __name__ == "__main__":
    sys.exit(run_cli(main))
