"""``python -m usad.run``: Train the three branches and evaluate USAD, in one process.

The code lives in ``usad.experiments.run``; this module is the command (``python -m usad`` lists them all).
"""

import sys

from usad.experiments.run import main  # noqa: F401 (the command's entry point)

if __name__ == "__main__":
    from usad.core.cli import run_cli
    sys.exit(run_cli(main))
