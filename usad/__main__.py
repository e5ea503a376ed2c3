"""``python -m usad``: the list of commands. Each one is ``python -m usad.COMMAND --help``."""

import importlib
import sys

COMMANDS = ("run", "reproduce", "compare", "sweep", "predict", "calibrate", "demo")


def main() -> int:
    print("usad: the reference reproduction of USAD (arXiv 2602.07694). Commands:\n")
    for name in COMMANDS:
        doc = (importlib.import_module(f"usad.{name}").__doc__ or "").strip().splitlines()[0]
        print(f"  {doc}")
    print("\nand the training scripts train_ma_clu.py, train_ma2patch.py, train_pc.py, test_fusion.py (README).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
