"""``python -m usad.compare``: Table 1 in full: every method on the same split and metrics, Figs. 7-8, resumable.

The code lives in ``usad.experiments.compare``; this module is the command (``python -m usad`` lists them all).
"""

import sys

from usad.experiments.compare import main  # noqa: F401 (the command's entry point)

if __name__ == "__main__":
    from usad.core.cli import run_cli
    sys.exit(run_cli(main))
