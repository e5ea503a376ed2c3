"""``python -m usad.demo``: Generate a small synthetic belt dataset and run USAD on it end to end.

The code lives in ``usad.experiments.demo``; this module is the command (``python -m usad`` lists them all).
"""

import sys

from usad.experiments.demo import main  # noqa: F401 (the command's entry point)

if __name__ == "__main__":
    from usad.core.cli import run_cli
    sys.exit(run_cli(main))
