"""Saved branch models: tensors and plain metadata only, written atomically.

A file holds ``{"format", "branch", "fit_config", "tensors", "info", "sha256"}``.
``fit_config`` records every config value the branch was fitted with; loading
under a config that differs in any of them fails and names the values.
``sha256`` covers everything else (values, tensor dtypes, shapes and bytes), so
a file changed after it was written (a flipped byte in a tensor that still
unpickles) is refused instead of silently giving other scores.
Files load with ``torch.load(weights_only=True)``: no code is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from usad.core.errors import UsadError

FORMAT = "usad-branch/2"  # /2: with the sha256 of the content
# Fit-config keys added after model files were first written: a file without one was fitted with this value.
FIT_DEFAULTS = {"data.holdout_ratio": 0.0, "data.holdout_seed": None, "precision": "fp32"}


class ArtifactError(UsadError, RuntimeError):
    """A saved model that is missing, unreadable, or fitted with another config."""


class WriteError(UsadError, OSError):
    """An output that cannot be written (a folder in the way, no permission, disk full)."""


def check_writable(folder: Path, key: str) -> None:
    """Fail early, without creating anything, if ``folder`` (the value of config key ``key``) cannot be written."""
    folder = Path(os.path.abspath(folder))
    existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise WriteError(f"{key} = {str(folder)!r} cannot be created: {existing} is a file, not a folder; "
                         f"choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"{key} = {str(folder)!r} is not writable ({existing} does not allow writing); "
                         f"choose another {key} or fix the permissions")


_umask_lock = threading.Lock()


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 minus the process umask (e.g. 0o644 with umask 022)."""
    with _umask_lock:  # the umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write, durable: bool = True) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a finished file is never half-overwritten.

    The temporary file is beside ``path`` (same file system, so the rename is atomic) and is removed
    if ``write`` fails or is interrupted (KeyboardInterrupt too). The final file gets the usual
    permissions (0o666 minus the umask, not mkstemp's 0o600), and with ``durable`` its content is
    flushed to disk before the rename, so a crash cannot leave an empty file under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e} ({e.filename or path.parent}); choose an output "
                         f"folder you can write to") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, default_file_mode())
        if durable:
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:  # includes KeyboardInterrupt: leave no partial file behind
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, UsadError) and e.errno is not None:  # disk full, a folder in the way...
            raise WriteError(f"cannot write {path}: {e.strerror or e}; nothing was changed there (free space, or "
                             f"choose another output folder)") from None
        raise


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(payload: dict) -> str:
    """SHA-256 of a model file's content: format, branch, fit_config, info, and every tensor's name, dtype,
    shape and bytes."""
    h = hashlib.sha256()
    meta = {k: payload.get(k) for k in ("format", "branch", "fit_config", "info")}
    h.update(json.dumps(meta, sort_keys=True, default=repr).encode())
    for name in sorted(payload["tensors"]):
        t = payload["tensors"][name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_artifact(path: Path, branch: str, fit_config: dict, tensors: dict[str, torch.Tensor], info: dict | None = None) -> None:
    payload = {
        "format": FORMAT,
        "branch": branch,
        "fit_config": fit_config,
        "tensors": {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        "info": info or {},
    }
    payload["sha256"] = content_sha256(payload)
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
    if not all(isinstance(t, torch.Tensor) for t in payload["tensors"].values()) or \
            payload.get("sha256") != content_sha256(payload):
        raise ArtifactError(f"{path}: its content does not match the checksum written with it (changed or damaged "
                            f"after it was saved); retrain with `{train_hint}`")
    if payload.get("branch") != branch:
        raise ArtifactError(f"{path} holds a {payload.get('branch')!r} model, expected {branch!r}")
    saved = {**FIT_DEFAULTS, **payload.get("fit_config", {})}
    diffs = [f"{k}: file has {saved.get(k, '<missing>')!r}, config has {v!r}"
             for k, v in fit_config.items() if saved.get(k, "<missing>") != v]
    if diffs:
        raise ArtifactError(
            f"{path} was trained with another config ({'; '.join(diffs)}). "
            f"Use the config it was trained with, or retrain with `{train_hint}`."
        )
    return payload
