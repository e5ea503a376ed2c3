"""``python -m usad.reproduce``: Every table and figure of the paper, resumable, with report.md.

The code lives in ``usad.experiments.reproduce``; this module is the command (``python -m usad`` lists them all).
"""

import sys

from usad.experiments.reproduce import main  # noqa: F401 (the command's entry point)

if __name__ == "__main__":
    from usad.core.cli import run_cli
    sys.exit(run_cli(main))
