"""Where a config puts things: the dataset folder of a category and its results folder."""

from __future__ import annotations

from pathlib import Path


def category_dir(cfg) -> Path:
    """The dataset folder; CoalAD is downloaded first when missing and ``data.download`` is on."""
    path = Path(cfg.data.root) / cfg.data.category
    if cfg.data.download and cfg.data.category == "coal_ad":
        from usad.core.data.coalad import download_coalad
        return download_coalad(cfg.data.root, cfg.data.category)  # returns at once when already complete
    return path


def results_dir(cfg) -> Path:
    return Path(cfg.paths.results) / cfg.data.category
