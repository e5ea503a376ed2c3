"""The USAD benchmark sections (data, run, tenth, golden, coreset): which commands are measured, on which
generated sets; the generic measuring lives in ``harness.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from harness import REPO, RUNNER, best, child, fresh, measure, set_args, tail

FULL_SIZE = ["maclu.pretrained=false", "ma2patch.pretrained=false", "patchcore.pretrained=false"]


TINY = ["maclu.pretrained=false", "maclu.model_kwargs={depth: 2, embed_dim: 16, num_heads: 2, init_values: 1.0}",
        "ma2patch.pretrained=false", "ma2patch.model_kwargs={depth: 2, embed_dim: 24, num_heads: 2, init_values: 1.0}",
        "patchcore.pretrained=false", "patchcore.backbone=resnet18"]


BACKBONES = {"full": FULL_SIZE, "tiny": TINY}


SCRIPTS = {"maclu": "train_ma_clu.py", "ma2patch": "train_ma2patch.py", "patchcore": "train_pc.py",
           "evaluate": "test_fusion.py"}


TRAINING = ("maclu", "ma2patch", "patchcore")


SCALES = {"dry": (16, 8), "small": (32, 16), "tenth": (249, 175), "full": (2490, 1754)}  # train, test images


ANOMALOUS_SHARE = 943 / 1754   # CoalAD's test set


IMAGE_PX = 512                 # CoalAD's image size


GOLDEN = Path(os.environ.get("USAD_GOLDEN", REPO.parent / "shared" / "golden"))


AUTHORS = Path(os.environ.get("USAD_AUTHORS", REPO.parent / "shared" / "usad-authors"))


GOLDEN_KEYS = ("s_obj", "s_attr", "s_pc", "s_fused", "m_obj", "m_attr", "m_pc", "m_fused")


PEARSON_MIN, METRIC_TOL = 0.999, 0.005  # the golden fixture's agreement thresholds (its README)


# ---------------------------------------------------------------------------- data sets
def split_counts(scale: str) -> tuple[int, int, int]:
    """(train, normal test, anomalous test) images of a scale, with CoalAD's test mix."""
    n_train, n_test = SCALES[scale]
    anomalous = round(n_test * ANOMALOUS_SHARE)
    return n_train, n_test - anomalous, anomalous


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def make_shard(job: tuple) -> None:
    """One shard of a set, generated with its own seed into its own folder (a process-pool job)."""
    import cv2

    from usad.core.data.synthetic import KINDS, make_synthetic_coalad

    cv2.setNumThreads(1)
    folder, k, n_train, n_good, n_anomalous, px = job
    kinds = KINDS[k % len(KINDS):] + KINDS[:k % len(KINDS)]  # every kind appears even when shards are small
    make_synthetic_coalad(folder, f"s{k:02d}", n_train=n_train, n_test_good=n_good, n_test_anomalous=n_anomalous,
                          size=px, kinds=kinds, seed=k)


def set_root(work: Path, scale: str) -> Path:
    """The data root of a scale's set (holding coal_ad/); see ``ensure_sets``."""
    return work / "data" / scale


def ensure_sets(work: Path, scales: list[str], workers: int | None = None) -> dict:
    """Generate the sets of ``scales`` that are missing from ``work`` (all shards of all sets in one process
    pool); a set is complete once its ``coal_ad.json`` is written. Returns the seconds spent per set."""
    workers = workers or os.cpu_count() or 1
    todo = [s for s in dict.fromkeys(scales) if not (set_root(work, s) / "coal_ad.json").is_file()]
    jobs = []
    for scale in todo:
        shutil.rmtree(set_root(work, scale), ignore_errors=True)
        n = split_counts(scale)
        parts = max(1, min(workers, sum(n) // 8))
        for k, counts in enumerate(zip(*(shares(c, parts) for c in n))):
            jobs.append((set_root(work, scale) / "shards", k, *counts, IMAGE_PX))
    t0 = time.perf_counter()
    if jobs:
        with Pool(min(workers, len(jobs))) as pool:
            pool.map(make_shard, jobs, chunksize=1)
    seconds = time.perf_counter() - t0
    for scale in todo:  # shard sK's files become coal_ad/<same folder>/sK_<name>: masks keep matching their images
        root = set_root(work, scale)
        for shard in sorted((root / "shards").iterdir()):
            for f in sorted(p for p in shard.rglob("*") if p.is_file()):
                dest = root / "coal_ad" / f.parent.relative_to(shard) / f"{shard.name}_{f.name}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, dest)
        shutil.rmtree(root / "shards")
        n = split_counts(scale)
        (root / "coal_ad.json").write_text(json.dumps({"train": n[0], "test_good": n[1], "test_anomalous": n[2],
                                                       "px": IMAGE_PX}))
    return {"generated": todo, "seconds": seconds, "workers": workers}


# ------------------------------------------------------------------------------ sections
def pipeline_overrides(root: Path, out: Path, ctx, backbones: str, precision: str = "fp32") -> list[str]:
    o = BACKBONES[backbones] + [f"data.root={root}", "data.download=false", f"paths.models={out / 'models'}",
                                f"paths.results={out / 'results'}", f"device={ctx.device}"]
    if ctx.batch_size:
        o.append(f"data.batch_size={ctx.batch_size}")
    if precision != "fp32":  # fp32 is the default (the paper)
        o.append(f"precision={precision}")
    return o


def four_scripts(tag: str, root: Path, ctx, backbones: str) -> dict:
    """The three training scripts and test_fusion.py, each its own process, on fresh model/result folders."""
    o = pipeline_overrides(root, fresh(ctx.work / "runs" / tag), ctx, backbones)
    res = {key: measure(f"{tag}-{key}", [script, *set_args(o)], ctx.logs) for key, script in SCRIPTS.items()}
    res["train_s"] = sum(res[k]["wall_s"] for k in TRAINING)
    res["total_s"] = res["train_s"] + res["evaluate"]["wall_s"]
    return res


def usad_run(tag: str, root: Path, ctx, backbones: str, precision: str = "fp32", again: bool = False) -> dict:
    """`python -m usad.run` on fresh folders (trains, then evaluates); with ``again``, a second time on the
    same folders (the models are there: evaluation only)."""
    out = fresh(ctx.work / "runs" / tag)
    argv = ["-m", "usad.run", *set_args(pipeline_overrides(root, out, ctx, backbones, precision))]
    res = {**measure(tag, argv, ctx.logs), "steps": logged_steps(ctx.logs / f"{tag}.log")}
    if again:
        res["evaluate_only"] = {**measure(f"{tag}-again", argv, ctx.logs),
                                "steps": logged_steps(ctx.logs / f"{tag}-again.log")}
    return res


def logged_steps(log: Path) -> dict:
    """usad.run's own step times from its log ("step train maclu: 12.3 s", "usad.run done in 45.6 s")."""
    text = log.read_text(errors="replace")
    steps = {name: float(v) for name, v in re.findall(r"step (.+?): ([0-9.]+) s", text)}
    done = re.findall(r"usad\.run done in ([0-9.]+) s", text)
    return {**steps, **({"main": float(done[-1])} if done else {})}


def floor(tag: str, root: Path, ctx, backbones: str, precision: str = "fp32") -> dict:
    o = pipeline_overrides(root, ctx.work / "runs" / tag, ctx, backbones, precision)
    res = measure(tag, [str(RUNNER), "--child", "floor", json.dumps(o)], ctx.logs)
    return {**res, **json.loads((ctx.logs / f"{tag}.log").read_text().strip().splitlines()[-1])}


def section_data(ctx) -> dict:
    return ensure_sets(ctx.work, [ctx.scale, ctx.tenth_scale])


def section_run(ctx) -> dict:
    scale, b = ctx.scale, ctx.backbones
    ensure_sets(ctx.work, [scale])
    root = set_root(ctx.work, scale)
    res = {"scale": scale, "n_train": SCALES[scale][0], "n_test": SCALES[scale][1], "backbones": b, "repeat": ctx.repeat}
    runs: dict[str, list] = {}
    for rep in range(ctx.repeat):  # interleaved, so that a slow spell hits floor and pipeline alike
        for p in ctx.precisions:
            if "floor" in ctx.parts:
                runs.setdefault(f"{p}/floor", []).append(floor(f"floor-{scale}-{p}-{rep}", root, ctx, b, p))
            if "usad_run" in ctx.parts:
                runs.setdefault(f"{p}/usad_run", []).append(usad_run(f"usad_run-{scale}-{p}-{rep}", root, ctx, b, p))
        if "scripts" in ctx.parts:
            runs.setdefault("scripts", []).append(four_scripts(f"scripts-{scale}-{rep}", root, ctx, b))
    for key, values in runs.items():
        p, _, part = key.rpartition("/")
        (res.setdefault(p, {}) if p else res)[part] = best(values)
    return res


def section_tenth(ctx) -> dict:
    scale, b = ctx.tenth_scale, ctx.tenth_backbones
    ensure_sets(ctx.work, [scale])
    root = set_root(ctx.work, scale)
    res = {"scale": scale, "n_train": SCALES[scale][0], "n_test": SCALES[scale][1], "backbones": b}
    if "authors" in ctx.tenth_parts:
        check_authors_setup(ctx)  # before our runs: a missing clone must not cost them
    if "usad_run" in ctx.tenth_parts:
        res["usad_run"] = usad_run(f"tenth-usad_run-{b}", root, ctx, b, again=True)
    if "scripts" in ctx.tenth_parts:
        res["scripts"] = four_scripts(f"tenth-scripts-{b}", root, ctx, b)
    if "authors" in ctx.tenth_parts:
        res["authors"] = authors_times(root / "coal_ad", ctx, b)
    return res


def check_authors_setup(ctx) -> None:
    if re.search("test|good", str(ctx.work)):  # their data code looks for these words anywhere in a path
        raise RuntimeError(f"--work {ctx.work} contains 'test' or 'good', which the authors' code cannot take: "
                           f"choose another --work")
    if not (ctx.authors / "train_pc.py").is_file():
        raise RuntimeError(f"the authors' code is not at {ctx.authors}: pass --authors DIR (a clone of "
                           f"github.com/xjpp2016/USAD) or set USAD_AUTHORS")


def authors_times(data: Path, ctx, backbones: str) -> dict:
    """The authors' four scripts on ``data`` via tools/authors_harness.py (each script its own process)."""
    work = fresh(ctx.work / "authors" / backbones)
    out = work.parent / f"times-{backbones}.json"
    out.unlink(missing_ok=True)
    log = ctx.logs / f"authors-{backbones}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, str(REPO / "tools" / "authors_harness.py"), "time", "--authors",
                             str(ctx.authors), "--data", str(data), "--backbones", backbones, "--device",
                             "cpu" if ctx.device == "cpu" else "cuda", "--work", str(work), "--out", str(out)],
                            stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"tools/authors_harness.py exited with {rc}; end of {log}:\n{tail(log)}")
    return {**json.loads(out.read_text()), "harness_wall_s": time.perf_counter() - t0}


def section_golden(ctx) -> dict:
    """usad.run on the golden fixture per device and precision (``golden_agreement``), then the golden tests
    on the measured device with USAD_TEST_DEVICE (CI runs them on the CPU)."""
    devices = ["cpu"] + ([ctx.device] if ctx.device != "cpu" else [])
    res = {}
    if (GOLDEN / "reference.npz").is_file():
        res.update(golden_agreement(ctx, devices))
    else:  # the golden tests below still run on the committed fixture (tests/golden)
        res["agreement_skipped"] = f"golden fixture not found at {GOLDEN}: set USAD_GOLDEN to a copy of ../shared/golden"
    res["startups"] = fixture_startups(ctx, devices[-1])
    device = devices[-1]
    log = ctx.logs / f"pytest-golden-{device.replace(':', '')}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/models/usad/test_golden.py"],
                            stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "USAD_TEST_DEVICE": device, "USAD_GOLDEN": str(GOLDEN)}).returncode
    lines = [line for line in tail(log, 2000).splitlines() if line.strip()]
    res[f"pytest_{device}"] = {"rc": rc, "summary": lines[-1] if lines else "", "wall_s": time.perf_counter() - t0}
    return res


def fixture_startups(ctx, device: str) -> dict:
    """The four scripts against `python -m usad.run` on the committed fixture (tests/golden), where the
    repeated start-ups are most of the scripts' time: interleaved, the minimum of ``ctx.repeat`` runs each."""
    config = ["--config", str(REPO / "tests" / "golden.yaml")]
    scripts, runs = [], []
    for rep in range(ctx.repeat):
        for tag in (f"fixture-scripts-{rep}", f"fixture-usad-run-{rep}"):
            out = fresh(ctx.work / "runs" / tag)
            o = set_args([f"paths.models={out / 'models'}", f"paths.results={out / 'results'}", f"device={device}"])
            if "scripts" in tag:
                scripts.append(sum(measure(f"{tag}-{key}", [script, *config, *o], ctx.logs)["wall_s"]
                                   for key, script in SCRIPTS.items()))
            else:
                runs.append(measure(tag, ["-m", "usad.run", *config, *o], ctx.logs)["wall_s"])
    return {"device": device, "scripts_s": min(scripts), "usad_run_s": min(runs),
            "usad_run_over_scripts": min(runs) / min(scripts)}


def golden_agreement(ctx, devices: list[str]) -> dict:
    """usad.run on the shared golden fixture per device and precision, against the authors' reference and
    against the first run (CPU, first precision)."""
    overrides = [f"data.root={GOLDEN}", "data.category=data"] + [
        f"{b}.weights={GOLDEN / 'weights' / w}" for b, w in
        (("maclu", "maclu_vit_tiny.pth"), ("ma2patch", "ma2patch_vit_tiny.pth"), ("patchcore", "patchcore_resnet18.pth"))]
    res, baseline = {}, ""
    for device in devices:
        for p in ctx.precisions:
            tag = f"golden-{device.replace(':', '')}-{p}"
            out = fresh(ctx.work / "runs" / tag)
            o = overrides + [f"paths.models={out / 'models'}", f"paths.results={out / 'results'}", f"device={device}"]
            o += [f"precision={p}"] if p != "fp32" else []
            preds = out / "predictions.npz"
            try:
                run = measure(tag, ["-m", "usad.run", "--config", str(REPO / "tests" / "golden.yaml"), *set_args(o),
                                    "--save-predictions", str(preds)], ctx.logs)
                res[f"{device}/{p}"] = {**run, **child("golden_compare", str(preds), baseline)}
            except RuntimeError as e:  # one device or precision failing keeps the others' figures
                res[f"{device}/{p}"] = {"error": str(e)[-2000:]}
                continue
            baseline = baseline or str(preds)  # the first run (cpu, first precision) is the baseline of the others
    return res


def section_coreset(ctx) -> dict:
    device = ctx.device
    out = {}
    fast = child("coreset", "112050", "1536", "1120", "0", device)
    naive = child("coreset", "112050", "1536", "60", "1", device)
    out["112k"] = {"fast": fast, "naive": naive, "speedup": fast["picks_per_s"] / naive["picks_per_s"],
                   "same_first_picks": fast["first_picks"][:60] == naive["first_picks"][:60]}
    if not ctx.no_full_coreset:
        fast = child("coreset", "1120500", "1536", "200", "0", device)
        naive = child("coreset", "1120500", "1536", "12", "1", device)
        out["1.12M"] = {"fast": fast, "naive": naive, "speedup": fast["picks_per_s"] / naive["picks_per_s"],
                        "same_first_picks": fast["first_picks"][:12] == naive["first_picks"][:12],
                        "estimated_full_coreset_s": 11205 / fast["picks_per_s"]}
    return out


def section_compare(ctx) -> dict:
    """``python -m usad.compare`` on the committed fixture (tests/golden.yaml: every method's tiny settings), in its
    own process, refitting everything: each method's training and prediction time from its table1.json row."""
    out_dir = fresh(ctx.work / "compare")
    overrides = [f"device={ctx.device}", f"paths.models={out_dir / 'models'}", f"paths.results={out_dir / 'results'}"]
    methods = ["--methods", ctx.compare_methods] if ctx.compare_methods else []
    run = measure("compare", ["-m", "usad.compare", "--config", str(REPO / "tests" / "golden.yaml"), *set_args(overrides),
                              *methods, "--retrain"], ctx.logs)
    table = json.loads(next((out_dir / "results").rglob("table1.json")).read_text())
    rows = table.get("methods", table)
    methods_out = {}
    for name, row in rows.items():
        if isinstance(row, dict) and "status" in row:
            methods_out[name] = {k: row.get(k) for k in ("status", "train_s", "predict_s", "images_per_s")}
    return {"scale": "golden", "backbones": "tiny", "wall_s": run["wall_s"], "peak_rss_mb": run.get("peak_rss_mb"),
            "methods": methods_out}
