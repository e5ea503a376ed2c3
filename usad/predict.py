"""``python -m usad.predict``: Score your own belt images, folders or video with trained models.

The code lives in ``usad.belt.predict``; this module is the command (``python -m usad`` lists them all).
"""

import sys

from usad.belt.predict import main  # noqa: F401 (the command's entry point)

if __name__ == "__main__":
    from usad.core.cli import run_cli
    sys.exit(run_cli(main))
