"""Train MA2Patch, the semantic attribution branch (Sec. 4.3): Gaussian of mean-pooled DINOv2 ViT-B/14 patch tokens.

    python train_ma2patch.py --config configs/coalad.yaml [--set KEY=VALUE ...]

Writes <paths.models>/<data.category>/ma2patch.pt.
"""

import sys

from usad.core.cli import run_cli
from usad.models.usad.branches import train_main

main = train_main("ma2patch", __doc__)

if __name__ == "__main__":
    sys.exit(run_cli(main))
