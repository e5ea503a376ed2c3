"""Stages and stamps: a step runs again only when what it reads, or what it wrote, changed.

Used by ``usad.reproduce`` (the paper's stages) and ``usad.compare`` (one stage per method and category).

A *stage* is a named step, its *dependencies* (a JSON-able dict: config values, file fingerprints, the
keys of the stages it reads) and a function that computes it and returns the files it wrote. When it has
run, a *stamp* ``<folder>/<name>.json`` records:

    key       SHA-256 of the dependencies        deps      the dependencies themselves (to say what changed)
    wrote     each written file: [size, mtime]   seconds   its wall time
    finished, device_name, commit                where and when it ran, plus what the stage adds (e.g. a row)

Next time the stage is skipped when its stamp holds the same key, a wall time, and every file it wrote
is still there unchanged. A stamp that is missing, unreadable, not a JSON object or lacks ``seconds``
(damaged or edited by hand) counts as none: the stage reruns. Stamps are written atomically and only after
the stage's outputs, so an interrupted stage has no stamp and reruns from its start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from usad.core.outputs import write_json

log = logging.getLogger("usad")

REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ fingerprints
def flat(d: dict, prefix: str = "", keep=()) -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; keys in ``keep`` (free-form mappings) stay whole."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in keep:
            out.update(flat(v, f"{prefix}{k}.", keep))
        else:
            out[f"{prefix}{k}"] = v
    return out


def digest(obj) -> str:
    """SHA-256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def identity(path: Path) -> list[int]:
    """A file's [size, mtime in ns]: cheap, no byte is read."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def files_fingerprint(root: Path, paths) -> str:
    """One hash of the files' paths below ``root``, sizes and mtimes (cheap: no file is read)."""
    root = Path(root)
    return digest([f"{p.relative_to(root).as_posix()}|{'|'.join(map(str, identity(p)))}" for p in sorted(set(paths))])


def changes(old: dict, new: dict, values=("config", "fit"), limit: int = 4) -> str:
    """What differs between two dependency dicts: ``maclu.tau: 1.14 -> 1.2`` for the entries in ``values``
    (config values, by key), ``test_images changed`` for the others (files, upstream stages)."""
    diffs = [f"{name} changed" for name in sorted(set(old) | set(new))
             if name not in values and old.get(name) != new.get(name)]
    for name in values:
        a, b = flat(old.get(name) or {}), flat(new.get(name) or {})
        diffs += [f"{k}: {short(a.get(k, '<none>'))} -> {short(b.get(k, '<none>'))}" for k in sorted(set(a) | set(b))
                  if a.get(k, "<none>") != b.get(k, "<none>")]
    return "; ".join(diffs[:limit]) + (f"; +{len(diffs) - limit} more" if len(diffs) > limit else "")


def short(v) -> str:
    text = repr(v)
    return text if len(text) <= 24 else text[:12] + "..." + text[-8:]


# ------------------------------------------------------------------ stamps
def read_json(path: Path) -> dict | None:
    """A JSON object file's content (a stamp, metrics.json...), or None when it is missing, unreadable or
    not an object (a damaged stamp then counts as no stamp: its stage reruns)."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def outputs_intact(stamp: dict) -> bool:
    """Every file the stage wrote is still there, unchanged (size and mtime)."""
    wrote = stamp.get("wrote", {})
    if not isinstance(wrote, dict):
        return False
    for name, ident in wrote.items():
        p = Path(name)
        if not p.is_file() or identity(p) != ident:
            return False
    return True


def describe(paths, base: Path) -> str:
    """``metrics.json`` / ``panels/ (4 files)``: what a stage wrote, short."""
    def rel(p: Path) -> str:
        return p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)

    paths = [Path(p) for p in paths]
    if len(paths) <= 1:
        return rel(paths[0]) if paths else "nothing"
    folders = sorted({rel(p.parent) for p in paths})
    return ", ".join(f"{f}/ ({sum(rel(p.parent) == f for p in paths)} files)" for f in folders)


# ------------------------------------------------------------------ where a stage ran
def environment(device) -> dict:
    """Versions, device name and this repository's git commit (recorded in stamps and reports)."""
    import cv2
    import numpy as np
    import PIL
    import sklearn
    import timm
    import torch
    import torchvision

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name = f"CPU: {name}, {os.cpu_count()} logical cores"
    return {"device": str(device), "device_name": name, "commit": git_commit(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "timm": timm.__version__, "numpy": np.__version__,
                         "scikit-learn": sklearn.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__},
            "platform": platform.platform()}


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return head.stdout.strip() + (" + uncommitted changes" if dirty else "")


# ------------------------------------------------------------------ the runner
class Stages:
    """The stamps of one folder and the stages run against them in this process.

    ``skip``: stage names left out (a finished stamp is still reported as up to date);
    ``before_first_run``: called once, before the first stage that actually computes (input checks);
    ``where``: ``device_name`` and ``commit`` recorded in each stamp; ``base``: folder that log lines
    describe written files relative to. ``records[name]`` holds each stage's status and stamp.
    """

    def __init__(self, folder: Path, *, skip=(), before_first_run: Callable[[], None] | None = None,
                 where: dict | None = None, base: Path | None = None, values=("config", "fit")):
        self.folder = Path(folder)
        self.skip = set(skip)
        self.before_first_run = before_first_run
        self.where = {k: (where or {}).get(k, "") for k in ("device_name", "commit")}
        self.base = Path(base) if base is not None else self.folder
        self.values = values   # dependency entries that hold config values (named one by one in the log)
        self.records: dict[str, dict] = {}

    def stamp_path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def finished(self, name: str, deps: dict) -> dict | None:
        """The stamp of ``name`` when it is finished for ``deps`` (same key, a wall time, outputs intact)."""
        old = read_json(self.stamp_path(name))
        done = (old is not None and old.get("key") == digest(deps) and isinstance(old.get("seconds"), (int, float))
                and outputs_intact(old))  # a stamp edited by hand or damaged counts as none: the stage reruns
        return old if done else None

    def run(self, name: str, deps: dict, compute, force: bool = False, why_forced: str = "forced") -> dict | None:
        """Run ``compute(old_stamp) -> (written paths, extra stamp fields)`` unless ``name`` is finished for
        ``deps`` (or skipped; ``force``: run anyway, the log says ``why_forced``); returns the stamp (None for a
        skipped stage that has none)."""
        done = self.finished(name, deps)
        if name in self.skip:
            self.records[name] = {"status": "up to date" if done else "skipped (--skip)", "stamp": done}
            log.info("stage %-26s skipped (--skip)", name)
            return done
        if done is not None and not force:
            self.records[name] = {"status": "up to date", "stamp": done}
            log.info("stage %-26s up to date, skipped (took %.1f s when run)", name, done["seconds"])
            return done
        old = read_json(self.stamp_path(name))
        why = (why_forced if force else "first run" if old is None
               else changes(old.get("deps") or {}, deps, self.values)
               or ("its outputs changed on disk" if old.get("key") == digest(deps) else "its dependencies changed"))
        log.info("stage %-26s running (%s)", name, why)
        if self.before_first_run is not None:
            check, self.before_first_run = self.before_first_run, None
            check()  # everything checkable before the first compute
        t0 = time.perf_counter()
        wrote, extra = compute(old)
        seconds = time.perf_counter() - t0
        stamp = {"stage": name, "key": digest(deps), "deps": deps, "seconds": seconds,
                 "wrote": {str(p): identity(p) for p in wrote}, **extra,
                 "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), **self.where}
        write_json(self.stamp_path(name), stamp)
        self.records[name] = {"status": f"ran ({why})", "stamp": stamp}
        log.info("stage %-26s %.1f s, wrote %s", name, seconds, describe(wrote, self.base))
        return stamp
