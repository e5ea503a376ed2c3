"""The generic benchmark harness: measure a command in its own process (wall time, peak host RSS, peak GPU
memory), run a measurement in a child process, merge repeats and results files. Nothing here knows USAD."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the usad package, for the measured children
RUNNER = Path(__file__).resolve().parent / "run.py"  # the script whose --child SECTION runs one measurement


# Runs a script or module as `python script.py ...` / `python -m module ...` would, then writes its own
# peak host RSS and peak GPU memory to the JSON file named by argv[1] when the interpreter exits.
PROBE = r"""
import atexit, json, runpy, sys
def _report(path=sys.argv[1]):
    out = {}
    try:
        with open("/proc/self/status") as f:
            out["peak_rss_mb"] = next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    except Exception as e:
        out["gpu_error"] = repr(e)
    with open(path, "w") as f:
        json.dump(out, f)
atexit.register(_report)
sys.argv = sys.argv[2:]
if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start, or since the last ``reset_peak_rss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def child(section: str, *args: str) -> dict:
    """Run one measurement in a fresh process; it prints one JSON line last."""
    out = subprocess.run([sys.executable, str(RUNNER), "--child", section, *args], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark {section} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, target: list[str], logs: Path, env: dict | None = None) -> dict:
    """Wall time, peak RSS and peak GPU memory of `python TARGET...` (a script path, or ``-m module``).

    Its output goes to ``logs/<name>.log``; a failure raises with the end of that log."""
    logs.mkdir(parents=True, exist_ok=True)
    log, report = logs / f"{name}.log", logs / f"{name}.mem.json"
    report.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-c", PROBE, str(report), *target], stdout=f, stderr=subprocess.STDOUT,
                            cwd=REPO, env=None if env is None else {**os.environ, **env}).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{name}: `python {' '.join(target[:2])} ...` exited with {rc}; end of {log}:\n{tail(log)}")
    return {"wall_s": wall, **(json.loads(report.read_text()) if report.is_file() else {})}


def set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def best(runs: list[dict]) -> dict:
    """Repeated measurements merged: the minimum of each time (``*_s``), the maximum of each peak (``*_mb``)."""
    out = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs if key in r]
        if isinstance(value, dict):
            out[key] = best(values)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("_s"):
            out[key] = min(values)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("_mb"):
            out[key] = max(values)
        else:
            out[key] = value
    return out


def merge(old: dict, new: dict) -> dict:
    """``new`` over ``old``, dictionaries merged key by key (a re-measured part replaces only itself)."""
    out = dict(old)
    for key, value in new.items():
        out[key] = merge(old[key], value) if isinstance(value, dict) and isinstance(old.get(key), dict) else value
    return out


def short(error: str) -> str:
    """The last line of an error, without its log prefix, cut to 100 characters."""
    lines = error.strip().splitlines() or [""]
    return re.sub(r"^[0-9:]+ ERROR \S+: ", "", lines[-1])[:100]


def fmt_s(x) -> str:
    return f"{x:.1f} s"


def mem(m: dict) -> str:
    gpu = f", GPU {m['gpu_peak_mb'] / 1024:.1f} GB" if "gpu_peak_mb" in m else ""
    return f"RSS {m.get('peak_rss_mb', 0) / 1024:.1f} GB{gpu}"


def worst(measurements: list[dict]) -> dict:
    """The highest peak of each kind over several processes."""
    return {k: max(m[k] for m in measurements if k in m) for k in ("peak_rss_mb", "gpu_peak_mb")
            if any(k in m for m in measurements)}


def write_results(path: Path, res: dict) -> None:
    from usad.core.outputs import (
        write_json,  # atomic: a benchmark killed mid-write keeps the previous file
    )

    write_json(path, res)
