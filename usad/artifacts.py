"""Saved branch models: tensors and plain metadata only, written atomically.

A file holds ``{"format", "branch", "fit_config", "tensors", "info"}``.
``fit_config`` records every config value the branch was fitted with; loading
under a config that differs in any of them fails and names the values.
Files load with ``torch.load(weights_only=True)``: no code is executed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UsadError

FORMAT = "usad-branch/1"


class ArtifactError(UsadError, RuntimeError):
    """A saved model that is missing, unreadable, or fitted with another config."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a finished file is never half-overwritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: leave no partial file behind
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(path: Path, branch: str, fit_config: dict, tensors: dict[str, torch.Tensor], info: dict | None = None) -> None:
    payload = {
        "format": FORMAT,
        "branch": branch,
        "fit_config": fit_config,
        "tensors": {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        "info": info or {},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_artifact(path: Path, branch: str, fit_config: dict, train_hint: str) -> dict[str, Any]:
    """Load and check a branch file; ``train_hint`` is the command that (re)creates it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no trained {branch} model at {path}: run `{train_hint}` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtifactError(
            f"{path} is not a readable usad model file (truncated, tampered or not ours): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Retrain with `{train_hint}`."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("tensors"), dict):
        raise ArtifactError(f"{path} is not a usad model file of format {FORMAT}; retrain with `{train_hint}`")
    if payload.get("branch") != branch:
        raise ArtifactError(f"{path} holds a {payload.get('branch')!r} model, expected {branch!r}")
    saved = payload.get("fit_config", {})
    diffs = [f"{k}: file has {saved.get(k, '<missing>')!r}, config has {v!r}"
             for k, v in fit_config.items() if saved.get(k, "<missing>") != v]
    if diffs:
        raise ArtifactError(
            f"{path} was trained with another config ({'; '.join(diffs)}). "
            f"Use the config it was trained with, or retrain with `{train_hint}`."
        )
    return payload
