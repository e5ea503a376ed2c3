"""``python -m usad.calibrate``: Fix an operating point (image and pixel thresholds) on normal images.

The code lives in ``usad.belt.calibrate``; this module is the command (``python -m usad`` lists them all).
"""

import sys

from usad.belt.calibrate import main  # noqa: F401 (the command's entry point)

if __name__ == "__main__":
    from usad.core.cli import run_cli
    sys.exit(run_cli(main))
