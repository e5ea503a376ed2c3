"""Command-line plumbing shared by every command: logging, seeding, timing, one clear error and exit status 2."""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager

import numpy as np
import torch

from usad.core.errors import UsadError

log = logging.getLogger("usad")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def step(name: str):
    """Log one line when a step ends: its name and wall time."""
    t0 = time.perf_counter()
    yield
    log.info("step %s: %.1f s", name, time.perf_counter() - t0)


def run_cli(main, argv=None) -> int:
    """Run a script's ``main``; a UsadError becomes one clear message and exit status 2."""
    setup_logging()
    try:
        rc = main(argv)
    except UsadError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: nothing half-written was kept (artifacts are written atomically)")
        return 130
    return rc if isinstance(rc, int) else 0
