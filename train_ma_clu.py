"""Train MACLU, the object-level branch (Sec. 4.2): CLS Gaussian + belt/coal KMeans on DINOv2 ViT-S/14.

    python train_ma_clu.py --config configs/coalad.yaml [--set KEY=VALUE ...]

Writes <paths.models>/<data.category>/maclu.pt.
"""

import argparse
import sys

from usad.config import add_config_args, config_from_args
from usad.pipeline import run_cli, train_branch


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    train_branch("maclu", config_from_args(args))


if __name__ == "__main__":
    sys.exit(run_cli(main))
