"""One job of ``usad.compare``: one method on one category, fitted, run on the test set and scored.

A job is the same for every method (``usad.models.base.Method``):

1. the split it may fit on: ``train/good``, and for validation ``validation/good`` (MVTec LOCO) or a held-out
   share ``compare.validation_ratio`` of ``train/good`` drawn with ``seed`` (CoalAD, MVTec AD); never the test set;
2. ``load`` the fitted state kept by an earlier run (same fit config) or ``fit`` and ``save`` it;
3. ``predict`` the test images (the layout's order: test folders sorted, then files);
4. maps resized bilinearly to ``data.eval_size``, scored with this project's metrics against the ground truth
   at that size (the pixels ``test_fusion.py`` scores), and written to ``<method>/predictions.npz``.

Resumable through ``usad.core.stages``: the stage ``<method>`` of ``<results>/<category>/compare/stages/``
depends on the method's fit config and settings, its weights files (size, mtime), the training and test
images and masks (path, size, mtime) and the evaluation settings. A job with an unchanged stamp is not
rerun; new training images or a changed weights file refit (``load`` is not tried).

Memory: the peak resident set of this process during fit and during predict (Linux ``VmHWM``, reset
before each step through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``, the peak since the process
started, and ``peak_host_how`` says so), that of the child processes a method starts (``peak_children_mb``,
see ``PeakMemory``), and on CUDA ``torch.cuda.max_memory_allocated`` (this process's tensors only).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import resource
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from usad.core import metrics
from usad.core.artifacts import file_sha256
from usad.core.backbones import resolve_device
from usad.core.cache import file_identity
from usad.core.spro import SPRO_FPR_LIMIT
from usad.core.data.layouts import LOCO_TYPES, Layout, load_gt, read_layout
from usad.core.errors import UsadError
from usad.core.loco_metrics import loco_metrics
from usad.core.ops import resize_bilinear
from usad.core.outputs import write_npz
from usad.core.paths import category_dir, results_dir
from usad.core.stages import Stages, files_fingerprint
from usad.models import METHODS, method_class
from usad.models.base import Method, Split

log = logging.getLogger("usad")

PREDICTION_KEYS = ("files", "label", "score", "map", "mask", "defect")  # <method>/predictions.npz
MVTEC_METRICS = ("image_auroc", "pixel_auroc", "pro_auc_usad", "aupro_0.3")
LOCO_METRICS = ("image_auroc_logical", "image_auroc_structural", "image_auroc_mean", "spro_auc_0.05_logical",
                "spro_auc_0.05_structural", "spro_auc_0.05")


class MethodOutputError(UsadError, ValueError):
    """A method's predictions that break the contract of ``Method.predict``."""


class MethodUnavailableError(UsadError, RuntimeError):
    """A method named on the command line that cannot run here (its module, a package or a file is missing)."""


# ------------------------------------------------------------------ the methods
def build_method(name: str, cfg, device: torch.device) -> Method:
    """The checked adapter of ``name``, or MethodUnavailableError saying why it cannot run (an unknown name is
    an UnknownMethodError). Nothing is fitted or downloaded."""
    try:
        cls = method_class(name)
    except ImportError as e:
        raise MethodUnavailableError(f"method {name!r}: cannot import {METHODS[name].split(':')[0]} ({e})") from None
    missing = [m for m in cls.requires if not importable(m)]
    if missing:
        raise MethodUnavailableError(f"method {name!r} needs {', '.join(missing)}: pip install -r "
                                     f"{cls.requirements_file or 'its requirements file'}")
    method = cls(cfg, device)
    try:
        method.check()
    except UsadError as e:
        raise MethodUnavailableError(f"method {name!r}: {e}") from None
    return method


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a missing parent package
        return False


def stages_of(cfg, where: dict | None = None, before_first_run=None) -> Stages:
    """The stamps of one category's comparison: ``<results>/<category>/compare/stages/``."""
    return Stages(compare_folder(cfg) / "stages", where=where, base=compare_folder(cfg),
                  before_first_run=before_first_run, values=("fit", "settings"))


def run_one(cfg, name: str, retrain: bool = False, where: dict | None = None) -> dict:
    """One job where it runs (this process, or a Ray worker): the method built and checked, the layout read,
    the stage run unless finished (``retrain``: run and refit anyway); returns its stamp."""
    method = build_method(name, cfg, resolve_device(cfg.device))
    job = Job(cfg, method, read_layout(category_dir(cfg)))
    return stages_of(cfg, where).run(name, job.deps(), lambda old: job.run(old, retrain), force=retrain,
                                     why_forced="--retrain")


# ------------------------------------------------------------------ what a job sees
@dataclass
class TestSet:
    """The test images of a layout with their ground truth at the evaluation size (uint8 0 / 1)."""

    __test__ = False
    files: list[Path]
    rel: list[str]          # relative to the category folder: the ``files`` of predictions.npz
    label: np.ndarray
    defect: list[str]       # the test folder: good, an MVTec defect, logical_anomalies / structural_anomalies
    masks: np.ndarray


def test_set(layout: Layout, eval_size: int) -> TestSet:
    files = [t.path for t in layout.test]
    masks = np.stack([load_gt(t, eval_size, layout.defects or None) for t in layout.test])
    return TestSet(files, [p.relative_to(layout.root).as_posix() for p in files], layout.labels,
                   [t.defect for t in layout.test], masks)


def fit_split(layout: Layout, ratio: float, seed: int) -> Split:
    """What a method may fit on. MVTec LOCO: train/good and validation/good. CoalAD / MVTec AD: train/good
    without ``round(ratio * n)`` images drawn with ``seed``, which are the validation set (both in file order)."""
    if layout.kind == "loco" or ratio == 0:
        return Split(layout.root, layout.category, layout.kind, list(layout.train), list(layout.validation))
    n_val = round(ratio * len(layout.train))
    held = set(np.random.default_rng(seed).permutation(len(layout.train))[:n_val].tolist())
    return Split(layout.root, layout.category, layout.kind,
                 [p for i, p in enumerate(layout.train) if i not in held],
                 [p for i, p in enumerate(layout.train) if i in held])


def model_folder(cfg, name: str) -> Path:
    """Where a method keeps its fitted state: ``<paths.models>/<category>/compare/<method>/``."""
    return Path(cfg.paths.models) / cfg.data.category / "compare" / name


def compare_folder(cfg) -> Path:
    return results_dir(cfg) / "compare"


# ------------------------------------------------------------------ one job
class Job:
    """One method on one category: its dependencies (for the stamp) and its run."""

    def __init__(self, cfg, method: Method, layout: Layout):
        self.cfg, self.method, self.layout = cfg, method, layout
        self.name, self.paper_name = method.name, method.paper_name
        self.split = fit_split(layout, cfg.compare.validation_ratio, cfg.seed)
        self.out = compare_folder(cfg) / self.name
        self._deps: dict | None = None

    def deps(self) -> dict:
        """What the job's results depend on (computed once: file sizes and mtimes, no file is read)."""
        if self._deps is None:
            self._deps = self._dependencies()
        return self._deps

    def _dependencies(self) -> dict:
        root = self.layout.root
        tests = [t.path for t in self.layout.test] + [m for t in self.layout.test for m in t.masks]
        return {"method": self.name, "fit": self.method.fit_config(), "settings": self.method.settings(),
                "weights": {k: file_identity(p) if Path(p).is_file() else None
                            for k, p in self.method.weights_files().items()},
                "train_images": files_fingerprint(root, self.split.train + self.split.validation),
                "validation": [p.relative_to(root).as_posix() for p in self.split.validation],
                "test_images": files_fingerprint(root, tests),
                "eval": {"eval_size": self.cfg.data.eval_size, "layout": self.layout.kind}}

    def run(self, old: dict | None, retrain: bool = False) -> tuple[list[Path], dict]:
        """Fit (or load), predict, score, write predictions.npz; returns (written files, {"row": ...})."""
        deps, method = self.deps(), self.method
        stale = old is not None and any((old.get("deps") or {}).get(k) != deps[k] for k in ("train_images", "weights"))
        if stale:
            log.info("%s: refitting: the training images or a weights file changed since it was fitted", self.name)
        folder = model_folder(self.cfg, self.name)
        peaks = PeakMemory(method.device)
        t0 = time.perf_counter()
        if not (retrain or stale) and method.load(folder):
            fitted, train_s, load_s = "loaded", None, time.perf_counter() - t0
            log.info("%s: fitted state loaded (not refitted; --retrain forces it)", self.name)
        else:
            log.info("%s: fitting on %d training and %d validation images of %s", self.name, len(self.split.train),
                     len(self.split.validation), self.layout.root)
            method.fit(self.split)
            train_s = time.perf_counter() - t0
            method.save(folder)
            fitted, load_s = "trained", None
        fit_peak = peaks.read()
        test = test_set(self.layout, self.cfg.data.eval_size)
        peaks = PeakMemory(method.device)
        t0 = time.perf_counter()
        scores, maps = method.predict(test.files)
        predict_s = time.perf_counter() - t0
        predict_peak = peaks.read()
        return self.finish(test, scores, maps, {
            "fit": fitted, "train_s": train_s, "load_s": load_s, "predict_s": predict_s,
            "images_per_s": len(test.files) / predict_s if predict_s > 0 else None,
            "peak_host_mb": {"fit": fit_peak["host_mb"], "predict": predict_peak["host_mb"]},
            "peak_host_how": fit_peak["host_how"],
            "peak_children_mb": ({"fit": fit_peak["children_mb"], "predict": predict_peak["children_mb"]}
                                 if fit_peak["children_mb"] or predict_peak["children_mb"] else None),
            "peak_gpu_mb": ({"fit": fit_peak["gpu_mb"], "predict": predict_peak["gpu_mb"]}
                            if method.device.type == "cuda" else None)})

    def run_given(self, given: "Given") -> tuple[list[Path], dict]:
        """Score predictions made elsewhere (``usad.reproduce``'s evaluation) like this job's own."""
        test = test_set(self.layout, self.cfg.data.eval_size)
        if list(given.files) != test.rel:
            raise MethodOutputError(f"{self.name}: the given predictions are for other test images than "
                                    f"{self.layout.root}'s ({len(given.files)} vs {len(test.rel)} files)")
        return self.finish(test, given.scores, given.maps, given.row)

    def finish(self, test: TestSet, scores, maps, row: dict) -> tuple[list[Path], dict]:
        """The predictions checked, at the evaluation size, scored and written: (written files, {"row": ...})."""
        scores, maps = checked_outputs(self.name, scores, maps, len(test.files))
        maps = at_eval_size(maps, self.cfg.data.eval_size)
        path = self.out / "predictions.npz"
        arrays = {"files": np.array(test.rel), "label": test.label, "score": scores, "map": maps, "mask": test.masks,
                  "defect": np.array(test.defect)}
        write_npz(path, {k: arrays[k] for k in PREDICTION_KEYS})
        method = self.method
        row = {"status": "ran", **score(self.cfg, self.layout, test, scores, maps), **row,
               "n_test": len(test.files), "n_train": len(self.split.train), "n_validation": len(self.split.validation),
               "settings": method.settings(), "fit_config": method.fit_config(),
               "weights_sha256": {k: file_sha256(p) for k, p in method.weights_files().items()},
               "device": str(method.device), "host": socket.gethostname(), "pid": os.getpid()}
        return [path], {"row": row}


@dataclass
class Given:
    """Predictions a method made elsewhere, in the test set's order: what ``Job.run_given`` scores.
    ``deps``: what they depend on (e.g. the evaluation stage's key); ``row``: its timings for the table."""

    files: list[str]
    scores: np.ndarray
    maps: np.ndarray
    deps: dict
    row: dict


def checked_outputs(name: str, scores, maps, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``Method.predict``'s contract: scores (N,), maps (N, H, W), all finite; as float32 arrays."""
    scores = np.asarray(scores.detach().cpu() if torch.is_tensor(scores) else scores, np.float32)
    maps = np.asarray(maps.detach().cpu() if torch.is_tensor(maps) else maps, np.float32)
    if scores.shape != (n,) or maps.ndim != 3 or len(maps) != n:
        raise MethodOutputError(f"{name}.predict returned scores {scores.shape} and maps {maps.shape} for {n} "
                                f"test images; expected ({n},) and ({n}, H, W)")
    bad = np.flatnonzero(~np.isfinite(scores) | ~np.isfinite(maps.reshape(n, -1)).all(1))
    if len(bad):
        raise MethodOutputError(f"{name}.predict gave a NaN or infinite score or map for test image {int(bad[0])} "
                                f"(of {n}); check its weights and settings")
    return scores, maps


def at_eval_size(maps: np.ndarray, size: int, chunk: int = 64) -> np.ndarray:
    """Maps resized bilinearly (half-pixel centres, as every branch map of USAD) to ``size x size``."""
    if maps.shape[1:] == (size, size):
        return maps
    out = np.empty((len(maps), size, size), np.float32)
    for a in range(0, len(maps), chunk):
        out[a:a + chunk] = resize_bilinear(torch.from_numpy(maps[a:a + chunk]), size).numpy()
    return out


# ------------------------------------------------------------------ metrics
def metric_device(cfg) -> torch.device | None:
    device = resolve_device(cfg.device)
    return device if device.type == "cuda" else None


def score(cfg, layout: Layout, test: TestSet, scores: np.ndarray, maps: np.ndarray) -> dict:
    """Table 1's metrics (CoalAD, MVTec AD), or MVTec LOCO's (``usad.core.loco_metrics``): the image AUROC of
    logical and of structural anomalies (each against every good test image) and their mean, and AU-sPRO up
    to FPR 0.05 for each type and their mean, from the method's scores and its maps at the evaluation size."""
    if layout.kind != "loco":
        result = metrics.compute_all(test.label, scores, test.masks, maps, device=metric_device(cfg))
        return {k: result[k] for k in MVTEC_METRICS}
    loco = loco_metrics(layout, maps, scores, size=cfg.data.eval_size, fpr_limit=SPRO_FPR_LIMIT)
    image, spro = loco["image_auroc"], loco["au_spro"]
    return {"image_auroc_logical": image.get(LOCO_TYPES[0]), "image_auroc_structural": image.get(LOCO_TYPES[1]),
            "image_auroc_mean": image["mean"], "spro_auc_0.05_logical": spro.get(LOCO_TYPES[0]),
            "spro_auc_0.05_structural": spro.get(LOCO_TYPES[1]), "spro_auc_0.05": spro["mean"]}


# ------------------------------------------------------------------ memory
class PeakMemory:
    """Peak host memory (and GPU memory on CUDA) from now until ``read``; and that of child processes (a method
    run by an external harness): the largest child's peak resident set when a child that ended in between
    exceeded every earlier child of this process (``ru_maxrss`` of the children cannot be reset), else None."""

    def __init__(self, device: torch.device):
        self.device = device
        self.children = max_rss_mb(resource.RUSAGE_CHILDREN)
        self.reset = reset_host_peak()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    def read(self) -> dict:
        gpu = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            gpu = torch.cuda.max_memory_allocated(self.device) / 2**20
        children = max_rss_mb(resource.RUSAGE_CHILDREN)
        out = {"gpu_mb": gpu, "children_mb": children if children > self.children else None}
        if self.reset:
            return {**out, "host_mb": vm_hwm_kb() / 1024, "host_how": "VmHWM of the job's process, reset before each step"}
        return {**out, "host_mb": max_rss_mb(resource.RUSAGE_SELF),
                "host_how": "ru_maxrss: the peak of the job's process since it started"}


def max_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def reset_host_peak() -> bool:
    """Reset this process's peak resident set (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return vm_hwm_kb() is not None
    except OSError:
        return False


def vm_hwm_kb() -> int | None:
    try:
        found = re.search(r"VmHWM:\s+(\d+)\s*kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None
