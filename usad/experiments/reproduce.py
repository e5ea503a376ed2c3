"""The paper in one command and one report (``python -m usad.reproduce``).

    python -m usad.reproduce --config configs/coalad.yaml [--set KEY=VALUE ...] [--retrain]
                             [--skip sweeps,panels,...] [--values SWEEP=V1,V2,...] [--panels N|all] [--heatmaps N|all]

Runs, in one process and in this order (each backbone built at most once, as in ``python -m usad.run``):

  train.maclu train.ma2patch train.patchcore   the three model files (missing or out-of-date ones only; --retrain: all)
  evaluate        the test set through the three backbones: branch scores and maps, MACLU's per-patch ratios
  table1          Table 1: metrics.json (printed)           heatmaps   fused-map overlays (--heatmaps N)
  ablation        Tables 2 and 3: ablation.json (printed)   panels     Fig. 9 panels (--panels N)
  sweep.tau  sweep.maclu_resolution  sweep.ma2patch_resolution        Figs. 12, 10, 11 (sweeps/*.csv, *.png)
  report          <paths.results>/<category>/report.md, rebuilt from what is on disk at every run

``--skip`` leaves stages out: heatmaps, ablation, panels, sweeps (all three), tau, maclu_resolution,
ma2patch_resolution. ``--values tau=1.1,1.14`` sets one sweep's points (default: the paper's, see usad.experiments.sweep).

Resumable. Every stage writes a stamp, ``reproduce/stages/<stage>.json`` beside the results: a hash of what
the stage depends on (the config values it reads, the files it reads) and the files it wrote. A stage whose
dependencies and outputs (size, mtime) are unchanged is skipped, so a rerun only rebuilds the report; a
changed value reruns the stages that read it and those after them, and the log says which value changed:

- train.<branch>: that branch's fit config (what its model file records: backbone, weights, image size,
  clusters, coreset, seed, holdout), the training images (path, size, mtime), the weights file. A valid
  model file for this config found without a stamp (e.g. made by ``train_*.py``) is used, not retrained.
- evaluate: the three model files (SHA-256), the test images and masks, every config value except
  ``maclu.tau``, ``maclu.sigma`` and ``fusion.*``, which act after the backbones and are applied from the
  stored outputs (``reproduce/outputs.npz``): changing tau reruns the MACLU maps onward, no backbone.
- table1, heatmaps, ablation, panels: the evaluation outputs and every config value (and their counts;
  table1 also the operating point file of ``usad.belt.calibrate``, whose section metrics.json carries).
- sweep.tau: the same but ``maclu.tau`` (it sweeps it), plus its values: no backbone.
- resolution sweeps: the model files and every config value but the swept branch's image size, plus
  their values. Each point's refitted branch is kept in ``reproduce/sweeps/`` and reused while its fit
  config and the training images are unchanged (a tau change re-evaluates the points, refits none);
  each point is stamped, so an interrupted sweep resumes at its first unfinished point.
Values that only change speed or places never rerun anything: device, data.batch_size,
data.num_workers, data.download, data.root (images are identified by path below it, size and mtime),
paths.*, cache.dir (and cache.dtype while cache.dir is unset), patchcore.bank_memmap.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from usad.experiments import sweep as sweeps
from usad.core.artifacts import atomic_write, file_sha256
from usad.core.backbones import check_vit, resolve_device
from usad.core.cache import file_identity
from usad.core.config import FREE_FORM, REPO_ROOT, add_config_args, config_from_args, load_config
from usad.core.data.dataset import test_samples, train_samples
from usad.belt.decisions import operating_point_path
from usad.core.errors import UsadError
from usad.experiments.evaluation import image_count, write_ablation, write_heatmaps, write_metrics, write_panels, with_tau
from usad.core.cli import run_cli
from usad.core.paths import category_dir, results_dir
from usad.models.usad.branches import BRANCHES, expected_fit_config, model_path
from usad.models.usad.inference import Predictions, evaluate
from usad.core.outputs import write_json, write_npz
from usad.experiments.report import PAPER_TABLE1, PAPER_TABLE2, PAPER_TABLE3
from usad.models.usad.branches import trained_branch
from usad.experiments.run import check_inputs

log = logging.getLogger("usad")

SWEEPS = tuple(sweeps.DEFAULT_VALUES)  # tau, maclu_resolution, ma2patch_resolution
STAGES = (*(f"train.{b}" for b in BRANCHES), "evaluate", "table1", "heatmaps", "ablation", "panels",
          *(f"sweep.{s}" for s in SWEEPS), "report")
SKIPPABLE = {"heatmaps": ["heatmaps"], "ablation": ["ablation"], "panels": ["panels"],
             "sweeps": [f"sweep.{s}" for s in SWEEPS], **{s: [f"sweep.{s}"] for s in SWEEPS}}
# Config values that change only speed or where things are: no stage depends on them.
PLACES_AND_SPEED = ("device", "data.batch_size", "data.num_workers", "data.download", "data.root", "paths",
                    "cache.dir", "patchcore.bank_memmap")
# What acts after the backbones: applied to the stored evaluation outputs (Eq. 7-8, Eq. 21-23).
AFTER_BACKBONES = ("maclu.tau", "maclu.sigma", "fusion")
OUTPUT_KEYS = ("files", "label", "mask", "s_obj", "s_attr", "s_pc", "m_attr", "m_pc", "maclu_r", "maclu_labels")


class ReproduceError(UsadError, ValueError):
    """Options of ``usad.experiments.reproduce`` that cannot run."""


# ------------------------------------------------------------------ fingerprints
def flat(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in FREE_FORM:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_values(cfg, exclude=()) -> dict:
    """The config as dotted keys, without the place/speed keys and ``exclude`` (keys or whole sections)."""
    skip = (*PLACES_AND_SPEED, *(() if cfg.cache.dir else ("cache.dtype",)), *exclude)
    return {k: v for k, v in flat(cfg.to_dict()).items() if not any(k == s or k.startswith(s + ".") for s in skip)}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def files_fingerprint(root: Path, paths) -> str:
    """One hash of the files' paths below ``root``, sizes and mtimes (cheap: no file is read)."""
    rows = []
    for p in sorted(set(paths)):
        st = p.stat()
        rows.append(f"{p.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}")
    return digest(rows)


def weights_identity(branch_cfg) -> dict | None:
    return file_identity(branch_cfg.weights) if branch_cfg.weights else None


def random_weight_branches(cfg) -> list[str]:
    """Branches whose backbone has random weights (``pretrained: false`` and no weights file)."""
    return [b for b in BRANCHES if not cfg[b].pretrained and not cfg[b].weights]


def changes(old: dict, new: dict, limit: int = 4) -> str:
    """What differs between two dependency dicts: ``maclu.tau: 1.14 -> 1.2`` for config values,
    ``test_images changed`` for files and upstream stages."""
    values = ("config", "fit")  # config values, by key
    diffs = [f"{name} changed" for name in sorted(set(old) | set(new))
             if name not in values and old.get(name) != new.get(name)]
    for name in values:
        a, b = flat(old.get(name, {})), flat(new.get(name, {}))
        diffs += [f"{k}: {short(a.get(k, '<none>'))} -> {short(b.get(k, '<none>'))}" for k in sorted(set(a) | set(b))
                  if a.get(k, "<none>") != b.get(k, "<none>")]
    return "; ".join(diffs[:limit]) + (f"; +{len(diffs) - limit} more" if len(diffs) > limit else "")


def short(v) -> str:
    text = repr(v)
    return text if len(text) <= 24 else text[:12] + "..." + text[-8:]


# ------------------------------------------------------------------ stamps
def identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def read_json(path: Path) -> dict | None:
    """A JSON object file's content (a stamp, metrics.json...), or None when it is missing, unreadable or
    not an object (a damaged stamp then counts as no stamp: its stage reruns)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def outputs_intact(stamp: dict) -> bool:
    """Every file the stage wrote is still there, unchanged (size and mtime)."""
    for name, ident in stamp.get("wrote", {}).items():
        p = Path(name)
        if not p.is_file() or identity(p) != ident:
            return False
    return True


def environment(device) -> dict:
    """Versions, device name and this repository's git commit."""
    import cv2
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


def sweep_values(cfg, given: dict, checked) -> dict:
    """Each sweep's points (``given`` or the paper's), those of the sweeps in ``checked`` checked before
    anything runs (resolutions against the ViT's patch size, on a weightless build)."""
    values = {s: list(given.get(s, sweeps.DEFAULT_VALUES[s])) for s in SWEEPS}
    for s in checked:
        b = sweeps.BRANCH_OF.get(s)
        patch = check_vit(cfg[b].backbone, cfg[b].image_size, cfg[b].model_kwargs, b) if b else None
        values[s] = sweeps.check_values(s, values[s], patch, cfg[b].backbone if b else "")
    return values


# ------------------------------------------------------------------ the run
class Reproduction:
    """The stages of one ``usad.experiments.reproduce`` run, their stamps, and what they share in memory."""

    def __init__(self, cfg, retrain: bool = False, skip=(), values: dict | None = None,
                 heatmaps: str = "8", panels: str = "4"):
        self.cfg, self.retrain, self.skip = cfg, retrain, set(skip)
        self.values = sweep_values(cfg, values or {}, [s for s in SWEEPS if f"sweep.{s}" not in self.skip])
        self.counts = {"heatmaps": heatmaps, "panels": panels}
        self.device = resolve_device(cfg.device)
        self.out = results_dir(cfg)
        self.state = self.out / "reproduce"
        self.branches: dict = {}         # fitted or loaded branch objects, each built once
        self._outputs = self._preds = None
        self.records: dict[str, dict] = {}
        self.checked = False
        self.env = environment(self.device)
        root = category_dir(self.cfg)
        self.train_images = files_fingerprint(root, [s.path for s in train_samples(root)])
        tests = test_samples(root)
        self.test_images = files_fingerprint(root, [s.path for s in tests] + [s.mask_path for s in tests if s.mask_path])

    # -------------------------------------------------------------- runner
    def stage(self, name: str, deps: dict, run, force: bool = False) -> dict:
        """Run ``run(old_stamp) -> [written paths]`` unless the stamp says it is done; returns the stamp."""
        path = self.state / "stages" / f"{name}.json"
        old = read_json(path)
        done = (old is not None and old.get("key") == digest(deps) and isinstance(old.get("seconds"), (int, float))
                and outputs_intact(old))  # a stamp edited by hand or damaged counts as none: the stage reruns
        if name in self.skip:
            self.records[name] = {"status": "up to date" if done else "skipped (--skip)", "stamp": old if done else None}
            log.info("stage %-26s skipped (--skip)", name)
            return old if done else None
        if done and not force:
            self.records[name] = {"status": "up to date", "stamp": old}
            log.info("stage %-26s up to date, skipped (took %.1f s when run)", name, old["seconds"])
            return old
        why = ("--retrain" if force else "first run" if old is None else changes(old.get("deps", {}), deps)
               or ("its outputs changed on disk" if old.get("key") == digest(deps) else "its dependencies changed"))
        log.info("stage %-26s running (%s)", name, why)
        if not self.checked:
            check_inputs(self.cfg)  # everything checkable before the first compute
            self.checked = True
        t0 = time.perf_counter()
        wrote, extra = run(old)
        seconds = time.perf_counter() - t0
        stamp = {"stage": name, "key": digest(deps), "deps": deps, "seconds": seconds,
                 "wrote": {str(p): identity(p) for p in wrote}, **extra,
                 "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "device_name": self.env["device_name"], "commit": self.env["commit"]}
        write_json(path, stamp)
        self.records[name] = {"status": f"ran ({why})", "stamp": stamp}
        log.info("stage %-26s %.1f s, wrote %s", name, seconds, describe(wrote, self.out))
        return stamp

    # -------------------------------------------------------------- shared in memory
    def branch(self, name: str):
        """A trained branch: the one fitted or loaded in this process, else loaded from its model file."""
        if name not in self.branches:
            self.branches[name], _ = trained_branch(name, self.cfg, self.device, check=False)  # in a stage: checked
        return self.branches[name]

    def outputs(self) -> Predictions:
        """The evaluation's branch outputs: from this process, or from reproduce/outputs.npz."""
        if self._outputs is None:
            with np.load(self.state / "outputs.npz") as z:
                self._outputs = Predictions(
                    files=[str(f) for f in z["files"]], label=z["label"], mask=z["mask"],
                    scores={k: z[k] for k in ("s_obj", "s_attr", "s_pc")}, maps={k: z[k] for k in ("m_attr", "m_pc")},
                    extras={k: z[k] for k in ("maclu_r", "maclu_labels", "maclu_fg")})
        return self._outputs

    def preds(self) -> Predictions:
        """Predictions at the config's tau and fusion, from the evaluation outputs (no backbone)."""
        if self._preds is None:
            out = self.outputs()
            self._preds = with_tau(out, int(out.extras["maclu_fg"]), self.cfg)
        return self._preds

    # -------------------------------------------------------------- stages
    def train(self, b: str) -> dict:
        path = model_path(self.cfg, b)
        deps = {"fit": expected_fit_config(b, self.cfg), "train_images": self.train_images,
                "weights": weights_identity(self.cfg[b]), "model_file": str(path.resolve())}

        def run(old):
            # what the model file does not record (its images, the weights file's content) forces a refit
            stale = old is not None and any(old.get("deps", {}).get(k) != deps[k] for k in ("train_images", "weights"))
            if stale:
                log.info("%s: refitting: the training images or the weights file changed since it was fitted", b)
            self.branches[b], how = trained_branch(b, self.cfg, self.device, retrain=self.retrain or stale, check=False)
            return [path], {"sha256": file_sha256(path), "how": how}

        return self.stage(f"train.{b}", deps, run, force=self.retrain)

    def model_hashes(self) -> dict:
        return {b: self.records[f"train.{b}"]["stamp"]["sha256"] for b in BRANCHES}

    def evaluate(self) -> dict:
        deps = {"config": config_values(self.cfg, exclude=AFTER_BACKBONES), "models": self.model_hashes(),
                "test_images": self.test_images}

        def run(old):
            preds = evaluate(self.cfg, {b: self.branch(b) for b in BRANCHES}, keep_ratios=True, check=False)
            preds.extras["maclu_fg"] = np.array(self.branch("maclu").fg)
            self._outputs, self._preds = preds, None
            path = self.state / "outputs.npz"
            arrays = {"files": np.array(preds.files), "label": preds.label, "mask": preds.mask,
                      **preds.scores, **preds.maps, **preds.extras}
            write_npz(path, {k: arrays[k] for k in (*OUTPUT_KEYS, "maclu_fg")})
            for k in ("m_obj", "m_fused"):  # recomputed from the outputs at the config's tau: free 2 maps per image
                del preds.maps[k]
            return [path], {}

        return self.stage("evaluate", deps, run)

    def after_evaluation(self, name: str, write, exclude=(), extra_deps: dict | None = None) -> dict:
        """A stage computed from the stored evaluation outputs: ``write() -> [paths]``."""
        evaluation = self.records["evaluate"]["stamp"]
        deps = {"config": config_values(self.cfg, exclude), "evaluation": evaluation["key"],
                "outputs": evaluation["wrote"], **(extra_deps or {})}
        return self.stage(name, deps, lambda old: (write(), {}))

    def table1(self) -> list[Path]:
        write_metrics(self.cfg, self.preds())
        return [self.out / "metrics.json"]

    def ablation(self) -> list[Path]:
        write_ablation(self.cfg, self.preds())
        return [self.out / "ablation.json"]

    def sweep_tau(self) -> dict:
        def write():
            out = self.outputs()
            rows = list(sweeps.tau_points(self.cfg, self.values["tau"], out, int(out.extras["maclu_fg"])))
            return sweeps.save_sweep(self.cfg, "tau", rows)

        return self.after_evaluation("sweep.tau", write, exclude=("maclu.tau",), extra_deps={"values": self.values["tau"]})

    def sweep_resolution(self, sweep: str) -> dict:
        branch = sweeps.BRANCH_OF[sweep]
        base = {"config": config_values(self.cfg, exclude=(f"{branch}.image_size",)), "models": self.model_hashes(),
                "train_images": self.train_images, "test_images": self.test_images}
        folder = self.state / "sweeps" / sweep

        def run(old):
            branches = {b: self.branch(b) for b in BRANCHES}
            rows = []
            for size in self.values[sweep]:
                point = folder / f"{size}.json"
                stamp, key = read_json(point), digest({**base, "image_size": size})
                if stamp is None or stamp.get("key") != key:
                    row = next(sweeps.resolution_points(self.cfg, sweep, [size], branches, fit=self.point_model))
                    write_json(point, {"key": key, "row": row})
                    stamp = {"row": row}
                else:
                    log.info("%s: point %d up to date", sweep, size)
                rows.append(stamp["row"])
            return sweeps.save_sweep(self.cfg, sweep, rows), {}

        return self.stage(f"sweep.{sweep}", {**base, "values": self.values[sweep]}, run)

    def point_model(self, branch: str, point_cfg, device):
        """A resolution point's fitted branch: the trained one at the config's size, else the one kept in
        reproduce/sweeps/ while its fit config and the training images are unchanged, else a new fit."""
        size = point_cfg[branch].image_size
        if size == self.cfg[branch].image_size:
            return self.branch(branch)
        path = self.state / "sweeps" / f"{branch}_resolution" / f"{branch}_{size}.pt"
        fit_stamp = path.with_suffix(".json")
        deps = {"train_images": self.train_images, "weights": weights_identity(point_cfg[branch])}
        stale = (read_json(fit_stamp) or {}).get("deps") != deps
        model, _ = trained_branch(branch, point_cfg, device, retrain=stale, path=path, check=False)
        write_json(fit_stamp, {"deps": deps})
        return model

    # -------------------------------------------------------------- all
    def run(self, t0: float | None = None) -> Path:
        t0 = time.perf_counter() if t0 is None else t0
        for b in BRANCHES:
            self.train(b)
        self.evaluate()
        point = operating_point_path(self.cfg)  # a calibrated operating point adds its section to metrics.json
        self.after_evaluation("table1", self.table1, extra_deps={"operating_point": identity(point) if point.is_file() else None})
        self.after_evaluation("heatmaps", lambda: write_heatmaps(self.cfg, self.preds(), self.counts["heatmaps"]),
                              extra_deps={"count": self.counts["heatmaps"]})
        self.after_evaluation("ablation", self.ablation)
        self.after_evaluation("panels", lambda: write_panels(self.cfg, self.preds(), self.counts["panels"]),
                              extra_deps={"count": self.counts["panels"]})
        self.sweep_tau()
        for s in SWEEPS[1:]:
            self.sweep_resolution(s)
        t1 = time.perf_counter()
        path = self.out / "report.md"
        self.records["report"] = {"status": "ran (always)"}
        write_report(path, self)
        self.records["report"]["seconds"] = time.perf_counter() - t1
        log.info("stage %-26s %.1f s, wrote %s", "report", time.perf_counter() - t1, path)
        log.info("usad.experiments.reproduce done in %.1f s: %s", time.perf_counter() - t0, path)
        return path


def describe(paths: list[Path], base: Path) -> str:
    """``metrics.json`` / ``panels/ (4 files)``: what a stage wrote, short."""
    def rel(p: Path) -> str:
        return p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)

    paths = [Path(p) for p in paths]
    if len(paths) <= 1:
        return rel(paths[0]) if paths else "nothing"
    folders = sorted({rel(p.parent) for p in paths})
    return ", ".join(f"{f}/ ({sum(rel(p.parent) == f for p in paths)} files)" for f in folders)


# ------------------------------------------------------------------ the report
# Known departures from the authors' code (usad-reference.md marks each one), with their size as measured on the
# golden fixture against the authors' own code (tests/golden/README.md, "Departures").
DEPARTURES = (
    ("ViT size in training",
     "the training scripts build the ViTs at timm's default 336 (MACLU) / 224 (MA2Patch) and feed them "
     "350 / 406 px images (position embedding interpolated twice in training, once in test)",
     "each ViT is built at its branch size (350 / 406) for training and test",
     "their code as-is vs at the branch size: s_attr Pearson 0.99742, M_attr 0.99512, M_fused 0.99672, "
     "Pixel-AUC -6.9e-4, PRO-AUC +7.0e-4, Image-AUCs equal"),
    ("PatchCore map blur",
     "PIL `GaussianBlur(radius=4)` on an 8-bit copy of the map",
     "a float Gaussian, sigma 4",
     "M_pc Pearson 0.999979 (max abs 0.0112), M_fused max abs 0.0016; "
     "usad-reference.md Sec. 5: maps < 0.015, metrics < 0.0005"),
    ("Image resize",
     "`Resize(s)`: the shorter side to s",
     "`Resize((s, s))`: a square",
     "none on square images (CoalAD's, the fixture's); a square patch grid for non-square ones"),
)


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def diff(v: float, paper: float) -> str:
    return f"{round(100 * v, 2) - paper:+.2f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def link(path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def table1_section(out: Path) -> list[str]:
    m = (read_json(out / "metrics.json") or {}).get("metrics")
    if m is None:
        return ["## Table 1 (%): the paper on CoalAD, this run beside it", "", "*Not computed.*"]
    paper = PAPER_TABLE1["USAD (fused)"]
    ours = (m["image_auroc"], m["pixel_auroc"], m["pro_auc_usad"])
    rows = [[name, *(f"{v:.2f}" for v in vals), ""] for name, vals in PAPER_TABLE1.items()]
    rows.append(["**USAD, this run**", *(pct(v) for v in ours), ""])
    rows.append(["difference (this run - paper USAD)", *(diff(v, p) for v, p in zip(ours, paper)), ""])
    return ["## Table 1 (%): the paper on CoalAD, this run beside it", "",
            md_table(["method", "Image-AUC", "Pixel-AUC", "PRO-AUC"], [r[:4] for r in rows]), "",
            f"PRO-AUC is the authors' variant (what the paper reports). The standard MVTec AU-PRO@0.3 of this run: "
            f"{pct(m['aupro_0.3'])}. Test images: {m.get('n_test_images', '?')}. Source: `metrics.json`."]


def current(run: "Reproduction", stage: str) -> bool:
    """Whether ``stage``'s outputs on disk are this config's (it ran, or was up to date)."""
    return bool((run.records.get(stage) or {}).get("stamp"))


def ablation_sections(run: "Reproduction", out: Path) -> list[str]:
    a = read_json(out / "ablation.json") if current(run, "ablation") else None
    if a is None:
        return ["## Tables 2 and 3: ablation (%)", "", "*Not computed (`--skip ablation`).*"]
    t2 = [[f"`{k}`", f"{p:.2f}", pct(a[f'image.{k}']), diff(a[f'image.{k}'], p)] for k, p in PAPER_TABLE2.items()]
    t3 = []
    for k, (pp, pr) in PAPER_TABLE3.items():
        r = a[f"pixel.{k}"]
        t3.append([f"`{k}`", f"{pp:.2f}", pct(r["pixel_auroc"]), diff(r["pixel_auroc"], pp),
                   f"{pr:.2f}", pct(r["pro_auc_usad"]), diff(r["pro_auc_usad"], pr), pct(r["aupro_0.3"])])
    return ["## Table 2: image-level ablation, Image-AUC (%)", "",
            md_table(["score", "paper", "this run", "difference"], t2), "",
            "## Table 3: pixel-level ablation (%)", "",
            md_table(["map", "Pixel-AUC paper", "Pixel-AUC this run", "difference", "PRO-AUC paper",
                      "PRO-AUC this run", "difference", "AU-PRO@0.3 this run"], t3), "",
            "Definitions: README, \"Ablation definitions\". Source: `ablation.json`."]


def figures_section(run: Reproduction, out: Path) -> list[str]:
    lines = ["## Fig. 9: input | ground truth | M_obj | M_attr | M_pc | fused", ""]
    panels = (run.records.get("panels", {}).get("stamp") or {}).get("wrote", {})
    lines += [f"![{Path(p).stem}]({link(p, out)})" for p in panels] or ["*No panels (`--skip panels`).*"]
    for s in ("maclu_resolution", "ma2patch_resolution", "tau"):
        stamp = run.records.get(f"sweep.{s}", {}).get("stamp")
        lines += ["", f"## {sweeps.FIGURE[s]}: {s.replace('_', ' ')}", ""]
        csv_path = out / "sweeps" / f"{s}.csv"
        if not stamp or not csv_path.is_file():
            lines.append(f"*Not computed (`--skip {s}`).*")
            continue
        lines.append(f"![{sweeps.FIGURE[s]}]({link(out / 'sweeps' / f'{s}.png', out)})")
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        x = "tau" if s == "tau" else "image_size"
        extra = [] if s == "tau" else [("branch_image_auroc", "branch Image-AUC"), ("branch_pixel_auroc", "branch Pixel-AUC"),
                                       ("branch_pro_auc_usad", "branch PRO-AUC")]
        cols = [("image_auroc", "Image-AUC"), ("pixel_auroc", "Pixel-AUC"), ("pro_auc_usad", "PRO-AUC"), *extra]
        table = [[r[x], *(pct(float(r[k])) for k, _ in cols),
                  *([] if s == "tau" else [f"{float(r['throughput_img_s']):.1f}"])] for r in rows]
        lines += ["", md_table([x, *(c for _, c in cols), *([] if s == "tau" else ["images/s"])], table), "",
                  f"Paper: {PAPER_SWEEPS[s]}. Source: `{link(csv_path, out)}`."]
    return lines


PAPER_SWEEPS = {"maclu_resolution": "224..504, best near 350", "ma2patch_resolution": "~304..420, PRO-AUC best at 406",
                "tau": "1.05..1.25, best at 1.14"}


def config_section(run: Reproduction, out: Path) -> list[str]:
    cfg_path = run.state / "config.yaml"
    atomic_write(cfg_path, lambda tmp: tmp.write_text(yaml.safe_dump(run.cfg.to_dict(), sort_keys=False)))
    paper, ours = flat(load_config(None).to_dict()), flat(run.cfg.to_dict())
    changed = [[f"`{k}`", f"`{paper.get(k)!r}`", f"`{ours.get(k)!r}`"] for k in ours if ours.get(k) != paper.get(k)]
    return ["## Configuration", "", f"The whole config: [{link(cfg_path, out)}]({link(cfg_path, out)}). "
            "Values that differ from the paper defaults (`configs/coalad.yaml`):", "",
            md_table(["key", "paper default", "this run"], changed) if changed else "*None: the paper's defaults.*"]


def environment_section(run: Reproduction) -> list[str]:
    env = run.env
    return ["## Environment", "",
            md_table(["", ""], [["device", f"{env['device']} ({env['device_name']})"],
                                ["git commit", f"`{env['commit']}`"], ["platform", env["platform"]],
                                *[[k, v] for k, v in env["versions"].items()]]), "",
            "This is the environment of the run that wrote this report; each stage's own is in the table of stages."]


def models_section(run: Reproduction) -> list[str]:
    rows = []
    for b in BRANCHES:
        stamp = run.records[f"train.{b}"]["stamp"]
        rows.append([b, f"`{model_path(run.cfg, b)}`", f"`{stamp['sha256']}`", stamp.get("finished", "")])
    return ["## Model files", "", md_table(["branch", "file", "SHA-256", "written or adopted"], rows)]


def stages_section(run: Reproduction) -> list[str]:
    rows = []
    for name in STAGES:
        rec = run.records.get(name)
        if rec is None:
            continue
        stamp = rec.get("stamp") or {}
        seconds = rec.get("seconds", stamp.get("seconds"))
        rows.append([name, rec["status"], "-" if seconds is None else f"{seconds:.1f}",
                     stamp.get("finished", ""), stamp.get("device_name", ""), f"`{stamp.get('commit', '')[:12]}`" if stamp else "",
                     describe(list(stamp.get("wrote", {})), run.out) if stamp else ""])
    return ["## Stages and wall time", "",
            md_table(["stage", "this run", "wall time (s) when computed", "computed", "device", "commit", "wrote"], rows)]


def departures_section() -> list[str]:
    rows = [[what, authors, ours, size] for what, authors, ours, size in DEPARTURES]
    return ["## Departures from the authors' code", "",
            md_table(["what", "authors' code", "this project", "measured size (golden fixture, authors' code)"], rows), "",
            "Sizes from `tests/golden/README.md` (the authors' code run on the committed fixture); every other "
            "output agrees with theirs within the golden thresholds (scores and maps Pearson >= 0.999, metrics "
            "within 0.005: `tests/test_golden.py`)."]


def write_report(path: Path, run: Reproduction) -> None:
    """report.md: everything readable on a code host, figures linked relative to it."""
    out = path.parent
    lines = [f"# USAD on {run.cfg.data.category}: this run beside the paper", ""]
    rand = random_weight_branches(run.cfg)
    if rand:
        lines += [f"> **WARNING: RANDOM BACKBONE WEIGHTS ({', '.join(rand)}).** `pretrained: false` and no `weights` "
                  "file: these numbers say nothing about USAD's detection quality, only that the pipeline runs.", ""]
    lines += [f"Written by `python -m usad.reproduce` on {datetime.now(timezone.utc).isoformat(timespec='seconds')}. "
              "Numbers in %, two decimals; a difference is this run minus the paper (percentage points).", ""]
    for section in (table1_section(out), ablation_sections(run, out), figures_section(run, out), config_section(run, out),
                    environment_section(run), models_section(run), stages_section(run), departures_section()):
        lines += section + [""]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))


# ------------------------------------------------------------------ command line
def parse_skip(text: str) -> list[str]:
    """``--skip sweeps,panels`` -> the stage names it leaves out."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SKIPPABLE]
    if bad:
        raise argparse.ArgumentTypeError(f"cannot skip {', '.join(map(repr, bad))}: choose from {', '.join(SKIPPABLE)}")
    return [stage for n in names for stage in SKIPPABLE[n]]


def parse_values(text: str) -> tuple[str, list[float]]:
    """``--values tau=1.1,1.2`` -> ("tau", [1.1, 1.2])."""
    name, _, values = text.partition("=")
    if name not in SWEEPS:
        raise argparse.ArgumentTypeError(f"expected SWEEP=V1,V2,... with SWEEP one of {', '.join(SWEEPS)}, got {text!r}")
    return name, sweeps.parse_values(values)


def main(argv=None) -> Reproduction:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--retrain", action="store_true", help="retrain the three branches even where valid model files exist")
    parser.add_argument("--skip", type=parse_skip, action="extend", default=[], metavar="STAGE,...",
                        help=f"leave stages out: {', '.join(SKIPPABLE)}")
    parser.add_argument("--values", type=parse_values, action="append", default=[], metavar="SWEEP=V1,V2,...",
                        help="the points of one sweep (repeatable; default: the paper's values)")
    parser.add_argument("--heatmaps", default="8", type=image_count, help="fused-map overlays to save (default 8, or 'all')")
    parser.add_argument("--panels", default="4", type=image_count, help="Fig. 9 panels to save (default 4, or 'all')")
    t0 = time.perf_counter()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    run = Reproduction(cfg, args.retrain, args.skip, dict(args.values), args.heatmaps, args.panels)
    run.run(t0)
    return run


if __name__ == "__main__":
    sys.exit(run_cli(main))
