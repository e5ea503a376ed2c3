"""One-minute smoke run: synthetic belt scenes, RANDOM tiny backbones, no network.

    python -m usad.demo [--root /tmp/usad_demo]

Generates a small CoalAD-layout set, then runs the same four scripts a real
run uses (train_ma_clu.py, train_ma2patch.py, train_pc.py, test_fusion.py)
with overrides for random tiny backbones. The numbers it prints say nothing
about USAD's accuracy: it only shows that the whole pipeline runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from usad.core.config import REPO_ROOT
from usad.core.data.synthetic import make_synthetic_coalad

SMOKE_OVERRIDES = [
    "data.download=false", "data.num_workers=0",
    "maclu.pretrained=false", "maclu.model_kwargs={depth: 2, embed_dim: 16, num_heads: 2, init_values: 1.0}",
    "ma2patch.pretrained=false", "ma2patch.model_kwargs={depth: 2, embed_dim: 24, num_heads: 2, init_values: 1.0}",
    "patchcore.pretrained=false", "patchcore.backbone=resnet18",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/usad_demo", help="where data, models and results go")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not (root / "coal_ad").is_dir():
        make_synthetic_coalad(root, n_train=24, n_test_good=6, n_test_anomalous=6, size=256, seed=0)
    overrides = SMOKE_OVERRIDES + [f"data.root={root}", f"paths.models={root / 'models'}", f"paths.results={root / 'results'}"]
    argv_set = [a for o in overrides for a in ("--set", o)]
    print("SMOKE RUN with random tiny backbones on synthetic data: NOT a result.", flush=True)
    for script in ("train_ma_clu.py", "train_ma2patch.py", "train_pc.py", "test_fusion.py"):
        cmd = [sys.executable, str(REPO_ROOT / script), *argv_set]
        if subprocess.run(cmd).returncode != 0:
            print(f"demo: {script} failed", file=sys.stderr)
            return 1
    print(f"SMOKE RUN done: results (not meaningful) in {root / 'results' / 'coal_ad'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
