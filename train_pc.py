"""Train PatchCore, the texture branch (Sec. 4.4): WRN50-2 layer2+3 memory bank with a greedy coreset.

    python train_pc.py --config configs/coalad.yaml [--set KEY=VALUE ...]

Writes <paths.models>/<data.category>/patchcore.pt.
"""

import sys

from usad.core.cli import run_cli
from usad.models.usad.branches import train_main

main = train_main("patchcore", __doc__)

if __name__ == "__main__":
    sys.exit(run_cli(main))
