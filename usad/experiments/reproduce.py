"""The paper in one command and one report (``python -m usad.reproduce``).

    python -m usad.reproduce --config configs/coalad.yaml [--set KEY=VALUE ...] [--retrain]
                             [--skip sweeps,panels,...] [--values SWEEP=V1,V2,...] [--panels N|all] [--heatmaps N|all]

Runs, in one process and in this order (each backbone built at most once, as in ``python -m usad.run``):

  train.maclu train.ma2patch train.patchcore   the three model files (missing or out-of-date ones only; --retrain: all)
  evaluate        the test set through the three backbones: branch scores and maps, MACLU's per-patch ratios
  table1          Table 1: metrics.json (printed)           heatmaps   fused-map overlays (--heatmaps N)
  ablation        Tables 2 and 3: ablation.json (printed)   panels     Fig. 9 panels (--panels N)
  compare         Table 1 in full: every method of compare.methods (default: every one that can run) through the
                  harness of usad.compare, USAD's row from this evaluation; Figs. 7-8 (compare/, see usad.compare)
  sweep.tau  sweep.maclu_resolution  sweep.ma2patch_resolution        Figs. 12, 10, 11 (sweeps/*.csv, *.png)
  report          <paths.results>/<category>/report.md, rebuilt from what is on disk at every run

``--skip`` leaves stages out: heatmaps, ablation, panels, compare, sweeps (all three), tau, maclu_resolution,
ma2patch_resolution. ``--values tau=1.1,1.14`` sets one sweep's points (default: the paper's, see usad.sweep).

Resumable (``usad.core.stages``). Every stage writes a stamp, ``reproduce/stages/<stage>.json`` beside the results: a hash of what
the stage depends on (the config values it reads, the files it reads) and the files it wrote. A stage whose
dependencies and outputs (size, mtime) are unchanged is skipped, so a rerun only rebuilds the report; a
changed value reruns the stages that read it and those after them, and the log says which value changed:

- train.<branch>: that branch's fit config (what its model file records: backbone, weights, image size,
  clusters, coreset, seed, holdout), the training images (path, size, mtime), the weights file. A valid
  model file for this config found without a stamp (e.g. made by ``train_*.py``) is used, not retrained.
- evaluate: the three model files (SHA-256), the test images and masks, every config value of USAD except
  ``maclu.tau``, ``maclu.sigma`` and ``fusion.*``, which act after the backbones and are applied from the
  stored outputs (``reproduce/outputs.npz``): changing tau reruns the MACLU maps onward, no backbone.
- table1, heatmaps, ablation, panels: the evaluation outputs and every config value of USAD (and their counts;
  table1 also the operating point file of ``usad.calibrate``, whose section metrics.json carries).
- compare: the evaluation outputs, every config value (the other methods' sections and ``compare`` too) and
  each method's own job key (its fit config, weights files, images: ``usad.experiments.compare_jobs``); the
  harness reruns only the methods whose job changed, and USAD's row is rescored from this evaluation.
- sweep.tau: the same but ``maclu.tau`` (it sweeps it), plus its values: no backbone.
- resolution sweeps: the model files and every config value but the swept branch's image size, plus
  their values. Each point's refitted branch is kept in ``reproduce/sweeps/`` and reused while its fit
  config and the training images are unchanged (a tau change re-evaluates the points, refits none);
  each point is stamped, so an interrupted sweep resumes at its first unfinished point.
Values that only change speed or places never rerun anything: device, data.batch_size,
data.num_workers, data.download, data.root (images are identified by path below it, size and mtime),
paths.*, cache.dir (and cache.dtype while cache.dir is unset), patchcore.bank_memmap. The other methods'
sections and ``compare.*`` rerun only the compare stage.

The report (``usad.experiments.reproduce_report``) is rebuilt from what is on disk at every run.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
import sys
import time
from pathlib import Path

import numpy as np

from usad.belt.decisions import operating_point_path
from usad.core.artifacts import file_sha256
from usad.core.backbones import check_vit, resolve_device
from usad.core.cache import file_identity
from usad.core.cli import run_cli
from usad.core.config import FREE_FORM, METHOD_CONFIGS, add_config_args, config_from_args
from usad.core.data.dataset import test_samples, train_samples
from usad.core.errors import UsadError
from usad.core.outputs import write_json, write_npz
from usad.core.paths import category_dir, results_dir
from usad.core.stages import Stages, digest, environment, files_fingerprint, flat, identity, read_json
from usad.experiments import sweep as sweeps
from usad.experiments.compare import Comparison
from usad.experiments.compare_jobs import Given, compare_folder
from usad.experiments.evaluation import image_count, with_tau, write_ablation, write_heatmaps, write_metrics, write_panels
from usad.experiments.reproduce_report import write_report
from usad.experiments.run import check_inputs
from usad.models.usad.branches import BRANCHES, expected_fit_config, model_path, trained_branch
from usad.models.usad.inference import Predictions, evaluate

log = logging.getLogger("usad")

__all__ = ["Reproduction", "STAGES", "SKIPPABLE", "file_sha256", "main"]

SWEEPS = tuple(sweeps.DEFAULT_VALUES)  # tau, maclu_resolution, ma2patch_resolution
STAGES = (*(f"train.{b}" for b in BRANCHES), "evaluate", "table1", "heatmaps", "ablation", "panels", "compare",
          *(f"sweep.{s}" for s in SWEEPS), "report")
SKIPPABLE = {"heatmaps": ["heatmaps"], "ablation": ["ablation"], "panels": ["panels"], "compare": ["compare"],
             "sweeps": [f"sweep.{s}" for s in SWEEPS], **{s: [f"sweep.{s}"] for s in SWEEPS}}
# Config values that change only speed or where things are: no stage depends on them.
PLACES_AND_SPEED = ("device", "data.batch_size", "data.num_workers", "data.download", "data.root", "paths",
                    "cache.dir", "patchcore.bank_memmap")
# What acts after the backbones: applied to the stored evaluation outputs (Eq. 7-8, Eq. 21-23).
AFTER_BACKBONES = ("maclu.tau", "maclu.sigma", "fusion")
OUTPUT_KEYS = ("files", "label", "mask", "s_obj", "s_attr", "s_pc", "m_attr", "m_pc", "maclu_r", "maclu_labels")


class ReproduceError(UsadError, ValueError):
    """Options of ``usad.reproduce`` that cannot run."""


# ------------------------------------------------------------------ what the stages read
def other_sections(cfg) -> tuple[str, ...]:
    """The config sections no USAD stage reads: ``compare`` and each other method's (configs/methods/)."""
    return ("compare", *(k for k in cfg if (METHOD_CONFIGS / f"{k}.yaml").is_file()))


def config_values(cfg, exclude=(), usad_only: bool = True) -> dict:
    """The config as dotted keys, without the place/speed keys and ``exclude`` (keys or whole sections), and
    with ``usad_only`` without the sections of the other methods and of ``compare``."""
    skip = (*PLACES_AND_SPEED, *(() if cfg.cache.dir else ("cache.dtype",)), *exclude,
            *(other_sections(cfg) if usad_only else ()))
    return {k: v for k, v in flat(cfg.to_dict(), keep=FREE_FORM).items()
            if not any(k == s or k.startswith(s + ".") for s in skip)}


def weights_identity(branch_cfg) -> dict | None:
    return file_identity(branch_cfg.weights) if branch_cfg.weights else None


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
    """The paper's stages of one ``usad.reproduce`` run (run by ``usad.core.stages.Stages``) and what they
    share in memory: the fitted branches and the evaluation's outputs."""

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
        self.env = environment(self.device)
        self.stages = Stages(self.state / "stages", skip=self.skip, before_first_run=lambda: check_inputs(cfg),
                             where=self.env, base=self.out)
        self.records = self.stages.records
        root = category_dir(self.cfg)
        self.train_images = files_fingerprint(root, [s.path for s in train_samples(root)])
        tests = test_samples(root)
        self.test_images = files_fingerprint(root, [s.path for s in tests] + [s.mask_path for s in tests if s.mask_path])
        # the other methods, built and checked before any compute (a method named in compare.methods must run)
        self.comparison = None if "compare" in self.skip else Comparison(cfg)

    def stage(self, name: str, deps: dict, run, force: bool = False) -> dict | None:
        return self.stages.run(name, deps, run, force=force, why_forced="--retrain")

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

    def after_evaluation(self, name: str, write, exclude=(), extra_deps: dict | None = None,
                         usad_only: bool = True) -> dict:
        """A stage computed from the stored evaluation outputs: ``write() -> [paths]``."""
        evaluation = self.records["evaluate"]["stamp"]
        deps = {"config": config_values(self.cfg, exclude, usad_only), "evaluation": evaluation["key"],
                "outputs": evaluation["wrote"], **(extra_deps or {})}
        return self.stage(name, deps, lambda old: (write(), {}))

    def table1(self) -> list[Path]:
        write_metrics(self.cfg, self.preds())
        return [self.out / "metrics.json"]

    def ablation(self) -> list[Path]:
        write_ablation(self.cfg, self.preds())
        return [self.out / "ablation.json"]

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
        compare_stage(self)
        sweep_tau_stage(self)
        for s in SWEEPS[1:]:
            sweep_resolution_stage(self, s)
        t1 = time.perf_counter()
        path = self.out / "report.md"
        self.records["report"] = {"status": "ran (always)"}
        write_report(path, self)
        self.records["report"]["seconds"] = time.perf_counter() - t1
        log.info("stage %-26s %.1f s, wrote %s", "report", time.perf_counter() - t1, path)
        log.info("usad.reproduce done in %.1f s: %s", time.perf_counter() - t0, path)
        return path


# ------------------------------------------------------------------ the stages after the evaluation
def compare_stage(run: Reproduction) -> dict:
    """Table 1 in full through ``usad.compare``'s harness: the other methods' jobs (finished ones are not
    rerun), USAD's row scored from this run's evaluation (no backbone runs again)."""
    if run.comparison is None:
        return run.stage("compare", {}, None)  # skipped
    category = run.cfg.data.category
    jobs = run.comparison.job_keys(category)

    def write():
        runs = run.comparison.plans[category].jobs
        given = {"usad": usad_given(run)} if "usad" in runs else {}
        table = run.comparison.run(given=given)[category]
        folder = compare_folder(run.cfg)
        return [folder / "table1.json", folder / "table1.md", *map(Path, table["figures"]["files"]),
                *(folder / n / "predictions.npz" for n, row in table["methods"].items() if row["status"] == "ran")]

    return run.after_evaluation("compare", write, usad_only=False,
                                 extra_deps={"jobs": jobs, "train_images": run.train_images})


def usad_given(run: Reproduction) -> Given:
    """USAD's predictions for the harness: this run's fused scores and maps, with the stages' wall times."""
    preds = run.preds()
    trains = [run.records[f"train.{b}"]["stamp"] for b in BRANCHES]
    trained = all(t.get("how") == "trained" for t in trains)
    evaluation = run.records["evaluate"]["stamp"]
    return Given(files=list(preds.files), scores=preds.scores["s_fused"], maps=preds.maps["m_fused"],
                 deps={"evaluation": evaluation["key"]},
                 row={"fit": "trained" if trained else "loaded", "train_s": sum(t["seconds"] for t in trains)
                      if trained else None, "load_s": None, "predict_s": evaluation["seconds"],
                      "images_per_s": len(preds.files) / evaluation["seconds"],
                      "peak_host_mb": None, "peak_host_how": "not measured in usad.reproduce (run usad.compare)",
                      "peak_gpu_mb": None, "source": "usad.reproduce: the train.* stages and the evaluate stage "
                                                    "(its wall time includes writing reproduce/outputs.npz)"})


def sweep_tau_stage(run: Reproduction) -> dict:
    def write():
        out = run.outputs()
        rows = list(sweeps.tau_points(run.cfg, run.values["tau"], out, int(out.extras["maclu_fg"])))
        return sweeps.save_sweep(run.cfg, "tau", rows)

    return run.after_evaluation("sweep.tau", write, exclude=("maclu.tau",), extra_deps={"values": run.values["tau"]})


def sweep_resolution_stage(run: Reproduction, sweep: str) -> dict:
    branch = sweeps.BRANCH_OF[sweep]
    base = {"config": config_values(run.cfg, exclude=(f"{branch}.image_size",)), "models": run.model_hashes(),
            "train_images": run.train_images, "test_images": run.test_images}
    folder = run.state / "sweeps" / sweep

    def compute(old):
        branches = {b: run.branch(b) for b in BRANCHES}
        rows = []
        for size in run.values[sweep]:
            point = folder / f"{size}.json"
            stamp, key = read_json(point), digest({**base, "image_size": size})
            if stamp is None or stamp.get("key") != key:
                row = next(sweeps.resolution_points(run.cfg, sweep, [size], branches, fit=partial(point_model, run)))
                write_json(point, {"key": key, "row": row})
                stamp = {"row": row}
            else:
                log.info("%s: point %d up to date", sweep, size)
            rows.append(stamp["row"])
        return sweeps.save_sweep(run.cfg, sweep, rows), {}

    return run.stage(f"sweep.{sweep}", {**base, "values": run.values[sweep]}, compute)


def point_model(run: Reproduction, branch: str, point_cfg, device):
    """A resolution point's fitted branch: the trained one at the config's size, else the one kept in
    reproduce/sweeps/ while its fit config and the training images are unchanged, else a new fit."""
    size = point_cfg[branch].image_size
    if size == run.cfg[branch].image_size:
        return run.branch(branch)
    path = run.state / "sweeps" / f"{branch}_resolution" / f"{branch}_{size}.pt"
    fit_stamp = path.with_suffix(".json")
    deps = {"train_images": run.train_images, "weights": weights_identity(point_cfg[branch])}
    stale = (read_json(fit_stamp) or {}).get("deps") != deps
    model, _ = trained_branch(branch, point_cfg, device, retrain=stale, path=path, check=False)
    write_json(fit_stamp, {"deps": deps})
    return model


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
