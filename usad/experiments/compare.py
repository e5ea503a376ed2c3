"""Table 1 in full (``python -m usad.compare``): every method on the same split, scored by the same metrics.

    python -m usad.compare --config configs/coalad.yaml [--set KEY=VALUE ...] [--methods usad,patchcore,...]
                           [--categories A,B] [--retrain] [--ray [ADDRESS]]

For each category (``--categories``, else ``compare.categories``, else ``data.category``; each a folder
under ``data.root`` in the CoalAD / MVTec AD or the MVTec LOCO layout) and each method (``--methods``, else
``compare.methods``, else every method of ``usad.models.METHODS``), one job (``usad.experiments.compare_jobs``):
fit on train/good, predict the test set, maps to ``data.eval_size``, this project's metrics. Then, in
``<paths.results>/<category>/compare/``:

  table1.json             per method: the metrics, train_s, predict_s, images_per_s, peak memory (host; GPU on
                          CUDA), status ("ran" or "not run: <reason>"), the paper's numbers, the settings, the
                          weights files' SHA-256; and the environment
  table1.md               the paper's Table 1 and this run side by side, with the differences
  <method>/predictions.npz  files, label, score, map (evaluation size), mask, defect
  fig7_low_contrast.png  fig8_high_contrast.png   input | ground truth | each method's map (compare_figures)

Methods named on the command line (or in ``compare.methods``) must run: an unknown name, a missing package or
weights file, a bad dataset layout are one message and exit status 2, before anything is fitted (a job that
fails later stops the run the same way; finished jobs keep their stamps). Without ``--methods`` a method that
cannot run here gets its row with ``not run: <reason>``, one whose job fails ``failed: <message>``, and the
other methods go on.

Resumable: each job is a stage of ``usad.core.stages`` (stamps in ``compare/stages/``): a finished job whose
inputs are unchanged is not rerun, and a fitted state is reused (USAD: ``usad.run``'s model files).
``--retrain`` refits every method. ``--ray [ADDRESS]`` runs the jobs as Ray tasks (``compare_ray``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from usad.core.backbones import resolve_device
from usad.core.cli import run_cli
from usad.core.config import ConfigError, add_config_args, config_from_args, plain, with_overrides
from usad.core.data.checks import check_dataset
from usad.core.data.layouts import Layout, read_layout
from usad.core.errors import UsadError
from usad.core.paths import category_dir
from usad.core.stages import digest, environment
from usad.experiments.compare_figures import write_figures
from usad.experiments.compare_jobs import Given, Job, MethodUnavailableError, build_method, compare_folder, stages_of, test_set
from usad.experiments.compare_ray import LOCAL, run_on_ray
from usad.experiments.compare_tables import PAPER_ROWS, paper_numbers, write_table1_json, write_table1_md
from usad.experiments.report import PAPER_TABLE1
from usad.models import METHODS, method_class

log = logging.getLogger("usad")


@dataclass
class Plan:
    """One category: its config, its layout, the jobs that can run and the rows of the methods that cannot."""

    cfg: object
    layout: Layout
    jobs: dict[str, Job] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)
    checked: bool = False


def names_option(value, key: str) -> list[str]:
    """A list of names from a config value (a list, or one comma-separated string)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"config key {key!r} must be a list of names, e.g. [usad, patchcore]; got {value!r}")
    return value


def check_compare_config(cfg) -> None:
    c = cfg.compare
    if not 0 <= c.validation_ratio < 1:
        raise ConfigError(f"config key 'compare.validation_ratio' must be in [0.0, 1.0), got {c.validation_ratio!r}")
    if c.figure_images < 0 or c.figure_tile < 16:
        raise ConfigError(f"config keys 'compare.figure_images' (>= 0) and 'compare.figure_tile' (>= 16): got "
                          f"{c.figure_images!r} and {c.figure_tile!r}")


def with_category(cfg, category: str):
    return with_overrides(cfg, f"data.category={json.dumps(category)}")  # JSON is YAML: '001' stays a string


class Comparison:
    """The jobs of one ``usad.compare`` run: planned (every method built and checked) on construction."""

    def __init__(self, cfg, methods: list[str] | None = None, categories: list[str] | None = None,
                 retrain: bool = False):
        check_compare_config(cfg)
        configured = names_option(cfg.compare.methods, "compare.methods")
        self.names = list(methods or configured or METHODS)
        self.explicit = bool(methods or configured)
        self.categories = list(categories or names_option(cfg.compare.categories, "compare.categories")
                               or [cfg.data.category])
        self.cfg, self.retrain = cfg, retrain
        self.device = resolve_device(cfg.device)
        self.env = environment(self.device)
        self.plans = {c: self.plan(c) for c in self.categories}

    def plan(self, category: str) -> Plan:
        cfg = with_category(self.cfg, category)
        plan = Plan(cfg, read_layout(category_dir(cfg)))  # a bad layout stops here (LayoutError)
        for name in self.names:
            try:
                job = Job(cfg, build_method(name, cfg, self.device), plan.layout)
                job.deps()  # the adapter's fit config, settings and weights files: any failure shows here
                plan.jobs[name] = job
            except MethodUnavailableError as e:
                if self.explicit:
                    raise
                plan.not_run[name] = f"not run: {e}"
                log.warning("%s on %s: not run: %s", name, category, e)
            except Exception as e:  # a broken adapter (a bug) does not take the other methods' rows down
                if self.explicit:
                    raise
                plan.not_run[name] = f"not run: its adapter failed before fitting: {type(e).__name__}: {e}"
                log.warning("%s on %s: not run: its adapter failed before fitting (a bug; traceback follows)",
                            name, category, exc_info=True)
        return plan

    def job_keys(self, category: str) -> dict[str, str]:
        """Each job's dependency key (what ``usad.reproduce``'s compare stage depends on)."""
        plan = self.plans[category]
        return {**{n: digest(j.deps()) for n, j in plan.jobs.items()}, **plan.not_run}

    # -------------------------------------------------------------- running
    def check_data(self, plan: Plan) -> None:
        """Decode every image and mask once, before the first job of a category runs (CoalAD / MVTec AD)."""
        if not plan.checked and plan.layout.kind == "mvtec":
            check_dataset(plan.layout.root, splits=("train",))
            check_dataset(plan.layout.root, plan.cfg.data.eval_size, splits=("test",))
        plan.checked = True

    def run(self, ray: str | None = None, given: dict[str, Given] | None = None) -> dict[str, dict]:
        """Every job (serially, or as Ray tasks with ``ray``), then each category's tables and figures;
        ``given``: predictions made elsewhere, scored as those methods' own. Returns {category: table}."""
        given = given or {}
        stamps, statuses, remote = {}, {}, {}
        for category, plan in self.plans.items():
            stages = stages_of(plan.cfg, self.env, before_first_run=lambda plan=plan: self.check_data(plan))
            for name, job in plan.jobs.items():
                if name in given:
                    stamps[category, name] = stages.run(name, {**job.deps(), "given": given[name].deps},
                                                        lambda old, job=job, g=given[name]: job.run_given(g))
                elif ray is not None:
                    done = None if self.retrain else stages.finished(name, job.deps())
                    if done is None:
                        remote[category, name] = (plan.cfg, name)
                        continue
                    stamps[category, name] = done
                    stages.records[name] = {"status": "up to date", "stamp": done}
                else:
                    try:
                        stamps[category, name] = stages.run(name, job.deps(), lambda old, job=job: job.run(old, self.retrain),
                                                            force=self.retrain, why_forced="--retrain")
                    except UsadError as e:
                        self.failed(plan, name, e)
                        continue
                    finally:
                        release(job)
                statuses[category, name] = stages.records[name]["status"]
        if remote:
            for category in {c for c, _ in remote}:
                self.check_data(self.plans[category])
            for (category, name), result in run_on_ray(ray, remote, self.retrain, self.env, self.explicit).items():
                if isinstance(result, UsadError):
                    self.failed(self.plans[category], name, result)
                else:
                    stamps[category, name], statuses[category, name] = result, "ran (ray)"
        return {c: self.write_category(c, stamps, statuses) for c in self.plans}

    def failed(self, plan: Plan, name: str, error: UsadError) -> None:
        """A job stopped by a UsadError: the error itself when the method was named (exit status 2; finished
        jobs keep their stamps), else its row says ``failed: <message>`` and the other methods go on."""
        if self.explicit:
            raise error
        plan.not_run[name] = f"failed: {error}"
        log.error("%s on %s failed: %s (the other methods go on)", name, plan.cfg.data.category, error)

    # -------------------------------------------------------------- outputs
    def write_category(self, category: str, stamps: dict, statuses: dict) -> dict:
        plan = self.plans[category]
        out = compare_folder(plan.cfg)
        rows = {}
        for name in self.names:
            paper_name = (plan.jobs[name].paper_name if name in plan.jobs else class_paper_name(name)) \
                or PAPER_ROWS.get(name) or name
            base = {"paper_name": paper_name,
                    "paper": paper_numbers(name, paper_name, plan.cfg, category, plan.layout.kind)}
            if name in plan.not_run:
                rows[name] = {"status": plan.not_run[name], **base}
                continue
            stamp = stamps[category, name]
            rows[name] = {**stamp["row"], **base, "stage": {
                "this_run": statuses[category, name], "seconds": stamp["seconds"], "finished": stamp["finished"],
                "device_name": stamp.get("device_name", ""), "commit": stamp.get("commit", "")}}
        table = {"category": category, "layout": plan.layout.kind, "eval_size": plan.cfg.data.eval_size,
                 "n_test": len(plan.layout.test), "validation": self.validation_text(plan), "methods": rows,
                 "paper_table1": {k: list(v) for k, v in PAPER_TABLE1.items()},
                 "compare": plain(plan.cfg.compare), "environment": self.env,
                 "figures": self.figures(plan, stamps, rows)}
        write_table1_json(out / "table1.json", table)
        write_table1_md(out / "table1.md", table)
        log.info("%s: %s", category, ", ".join(f"{n}: {r['status']}" for n, r in rows.items()))
        log.info("Table 1 of %s written to %s", category, out / "table1.md")
        return table

    def figures(self, plan: Plan, stamps: dict, rows: dict) -> dict:
        """Figs. 7-8 as a stage of their own: redrawn when a method's predictions or the figure settings change."""
        ran = [n for n in self.names if rows[n]["status"] == "ran"]
        if plan.cfg.compare.figure_images == 0 or not ran:
            return {"files": []}
        out = compare_folder(plan.cfg)
        category = plan.cfg.data.category
        deps = {"jobs": {n: stamps[category, n]["key"] for n in ran}, "figure_images": plan.cfg.compare.figure_images,
                "figure_tile": plan.cfg.compare.figure_tile}

        def draw(old):
            test = test_set(plan.layout, plan.cfg.data.eval_size)
            info = write_figures(out, plan.layout.root, test.rel, test.label, test.masks,
                                 {rows[n]["paper_name"]: out / n / "predictions.npz" for n in ran},
                                 plan.cfg.compare.figure_images, plan.cfg.compare.figure_tile)
            return [Path(p) for p in info["files"]], {"figures": info}

        return stages_of(plan.cfg, self.env).run("figures", deps, draw)["figures"]

    @staticmethod
    def validation_text(plan: Plan) -> str:
        if plan.layout.kind == "loco":
            return f"validation/good ({len(plan.layout.validation)} images)"
        ratio = plan.cfg.compare.validation_ratio
        return (f"{round(ratio * len(plan.layout.train))} of the {len(plan.layout.train)} train/good images held out "
                f"(compare.validation_ratio={ratio}, seed {plan.cfg.seed}); USAD fits on all of them")


def class_paper_name(name: str) -> str:
    """The ``paper_name`` of a method that did not run, where its adapter can be imported ("" elsewhere)."""
    try:
        return method_class(name).paper_name
    except Exception:  # its module or a package is missing: the row keeps the registry name
        return ""


def release(job: Job) -> None:
    """Free a finished job's fitted model before the next one (serial runs share one process)."""
    job.method = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ command line
def comma_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected NAME,NAME,..., got {text!r}")
    return names


def main(argv=None) -> dict:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--methods", type=comma_list, metavar="NAME,...",
                        help=f"methods to run (default: compare.methods, else every one that can run: {', '.join(METHODS)})")
    parser.add_argument("--categories", type=comma_list, metavar="NAME,...",
                        help="category folders under data.root (default: compare.categories, else data.category)")
    parser.add_argument("--retrain", action="store_true", help="refit every method even where a fitted state is kept")
    parser.add_argument("--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
                        help="run the jobs as Ray tasks: no ADDRESS = a local Ray instance, 'auto' = the cluster "
                             "running here, ray://HOST:10001 = a remote one (pip install -r requirements-ray.txt)")
    t0 = time.perf_counter()
    args = parser.parse_args(argv)
    comparison = Comparison(config_from_args(args), args.methods, args.categories, args.retrain)
    tables = comparison.run(ray=args.ray)
    log.info("usad.compare done in %.1f s", time.perf_counter() - t0)
    return tables


if __name__ == "__main__":
    sys.exit(run_cli(main))
