"""``python -m usad.sweep``: Sensitivity sweeps: tau (Fig. 12), MACLU and MA2Patch resolutions (Figs. 10-11).

The code lives in ``usad.experiments.sweep``; this module is the command (``python -m usad`` lists them all).
"""

import sys

from usad.experiments.sweep import main  # noqa: F401 (the command's entry point)

if __name__ == "__main__":
    from usad.core.cli import run_cli
    sys.exit(run_cli(main))
