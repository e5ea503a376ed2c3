"""Train MACLU, the object-level branch (Sec. 4.2): CLS Gaussian + belt/coal KMeans on DINOv2 ViT-S/14.

    python train_ma_clu.py --config configs/coalad.yaml [--set KEY=VALUE ...]

Writes <paths.models>/<data.category>/maclu.pt.
"""

import sys

from usad.core.cli import run_cli
from usad.models.usad.branches import train_main

main = train_main("maclu", __doc__)

if __name__ == "__main__":
    sys.exit(run_cli(main))
