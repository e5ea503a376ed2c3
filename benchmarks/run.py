"""Speed and memory of the usad pipeline, with no downloads. Prints a table and writes JSON.

    python benchmarks/run.py [--device cpu|cuda] [--only SECTION,...] [--work DIR] [--update] [--out FILE]

Sections (``--only``; every measured command runs in its own process, and its
wall time counts that process's start-up: interpreter, imports, CUDA init,
model builds). Each measured process reports its own peak host RSS (VmHWM)
and peak GPU memory (torch.cuda.max_memory_allocated).

  data     the generated sets the other sections use, CoalAD layout, 512 px PNG,
           CoalAD's test mix (943 of 1,754 anomalous): small 32 / 16, tenth
           249 / 175, full 2,490 / 1,754 (CoalAD size). Written in parallel
           (one process per core) into --work and kept there between runs.
  golden   `python -m usad.run` on ../shared/golden (or $USAD_GOLDEN) per device
           (cpu, and cuda with --device cuda) and --precision: Pearson of
           scores and maps and metric deltas against the authors' reference,
           and the largest difference to the CPU fp32 outputs; then
           `pytest tests/test_golden.py` with USAD_TEST_DEVICE=<--device>.
  run      at --scale (default small on CPU, full on CUDA), --backbones (full:
           random ViT-S/14, ViT-B/14 DINOv2 and Wide-ResNet50-2):
           floor     one process: imports + CUDA init + the three model builds +
                     the three backbones' forward passes over the train images
                     (PatchCore: its half) and the test images, at the batch size;
           usad_run  `python -m usad.run` (three trainings + evaluation), per precision;
           scripts   the four scripts, fp32.
           Ratios: usad.experiments.run / floor, four scripts / usad.experiments.run, and the scripts'
           own overheads (three training scripts / (3 start-ups + builds +
           train forwards); test_fusion.py / (1 start-up + builds + test forwards)).
           ``--parts`` picks among floor,usad_run,scripts; ``--repeat`` runs
           them interleaved and keeps each timing's minimum (a shared VM drifts).
  tenth    1/10 CoalAD (249 / 175) against the authors' code
           (tools/authors_harness.py: their four scripts, each its own
           process, same backbones: tiny on CPU, full on CUDA). Ours: the four
           scripts, and `python -m usad.run` run twice (trains + evaluates;
           then, with the models in place, evaluates only). ``--tenth-parts``.
  coreset  picks/s of the exact fast greedy vs the authors' loop, and peak
           memory, at 112k and 1.12M patches (1/10 and full CoalAD).
  metrics  time and peak memory of all four metrics on 1,754 generated
           406 x 406 maps (the CoalAD test set).

``--update`` merges into an existing --out file (section by section, part by
part), so that benchmarks/gpu.sh can run the sections one at a time.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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
    out = subprocess.run([sys.executable, __file__, "--child", section, *args], capture_output=True, text=True, cwd=REPO)
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


# ----------------------------------------------------------------------------- children
def child_env() -> dict:
    import torch

    res = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        res.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu_memory_gb=torch.cuda.get_device_properties(0).total_memory / 1e9)
    return res


def child_floor(overrides: list[str]) -> dict:
    """One start-up (imports, CUDA init, three model builds) and the three backbones' bare forward passes
    over the train and test images at the batch size: what no pipeline can go below."""
    t0 = time.perf_counter()
    import timm, torch, torchvision  # noqa: F401,E401  the libraries every script loads
    import usad.models.usad.branches  # noqa: F401
    result = {"import_s": time.perf_counter() - t0, "cuda_init_s": 0.0, "build_s": 0.0,
              "train_forward_s": 0.0, "test_forward_s": 0.0}

    from usad.core.backbones import resolve_device
    from usad.core.config import load_config
    from usad.models.usad.patchcore import training_subset
    from usad.models.usad.branches import build_branch

    cfg = load_config(None, overrides)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        t0 = time.perf_counter()
        torch.cuda.init()
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
        result["cuda_init_s"] = time.perf_counter() - t0
    torch.set_grad_enabled(False)
    n_train = len(list((Path(cfg.data.root) / cfg.data.category / "train" / "good").glob("*.png")))
    n_test = sum(1 for _ in (Path(cfg.data.root) / cfg.data.category / "test").rglob("*.png"))
    for name in TRAINING:
        t0 = time.perf_counter()
        backbone = build_branch(name, cfg, device).backbone  # with the config's precision (bf16: autocast inside)
        result["build_s"] += time.perf_counter() - t0
        size, batch = cfg[name].image_size, cfg.data.batch_size
        n = len(training_subset(n_train, cfg.patchcore.train_ratio, cfg.seed)) if name == "patchcore" else n_train
        x = torch.randn(batch, 3, size, size, device=device)
        for key, count in (("train_forward_s", n), ("test_forward_s", n_test)):
            t0 = time.perf_counter()
            for start in range(0, count, batch):
                backbone(x[:min(batch, count - start)])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result[key] += time.perf_counter() - t0
        del backbone
    result.update(n_train=n_train, n_test=n_test, precision=cfg.get("precision", "fp32"))
    if device.type == "cuda":
        result["floor_gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def child_golden_compare(preds_path: str, baseline_path: str) -> dict:
    """Agreement of a golden run with the authors' reference.npz, and its largest differences to a baseline run."""
    import numpy as np
    import torch

    from usad.core import metrics
    from usad.models.usad.fusion import to_eval_size

    ref, ours = np.load(GOLDEN / "reference.npz"), np.load(preds_path)

    def pearson(a, b) -> float:
        return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])

    def ref_at_eval_size(key):
        r = ref[key].astype(np.float32)
        return to_eval_size(torch.from_numpy(r), ours[key].shape[-1]).numpy() if r.ndim == 3 else r

    def metric_values(p) -> dict:
        m = metrics.compute_all(p["label"], p["s_fused"], p["mask"], p["m_fused"])
        return {"image_auroc_fused": m["image_auroc"], "image_auroc_obj": metrics.image_auroc(p["label"], p["s_obj"]),
                "image_auroc_pc": metrics.image_auroc(p["label"], p["s_pc"]), "pixel_auroc_fused": m["pixel_auroc"],
                "pro_auc_official": m["pro_auc_usad"]}

    mine = metric_values(ours)
    res = {"pearson": {k: pearson(ours[k], ref_at_eval_size(k)) for k in GOLDEN_KEYS},
           "metric_delta": {k: abs(v - float(ref[f"metric_{k}"])) for k, v in mine.items()}, "metrics": mine}
    res["worst_pearson"] = min(res["pearson"].values())
    res["worst_metric_delta"] = max(res["metric_delta"].values())
    res["within_thresholds"] = res["worst_pearson"] >= PEARSON_MIN and res["worst_metric_delta"] <= METRIC_TOL
    if baseline_path:
        base = np.load(baseline_path)
        res["max_abs_diff_to_baseline"] = {k: float(np.abs(ours[k].astype(np.float64) - base[k]).max()) for k in GOLDEN_KEYS}
        res["pearson_to_baseline"] = {k: pearson(ours[k], base[k]) for k in GOLDEN_KEYS}
        res["metric_diff_to_baseline"] = {k: abs(v - metric_values(base)[k]) for k, v in mine.items()}
    return res


def child_coreset(n: int, d: int, picks: int, naive: bool, device: str) -> dict:
    import numpy as np
    import torch

    from usad.core.sampler import greedy_coreset, greedy_coreset_naive, random_projection

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, d)).astype(np.float32)
    bank = np.empty((n, d), np.float32)  # clustered patches, generated in blocks (1.12M x 1536 is 6.9 GB)
    for a in range(0, n, 65536):
        rows = min(65536, n - a)
        bank[a:a + rows] = centres[rng.integers(0, 64, rows)] + 0.3 * rng.standard_normal((rows, d), dtype=np.float32)
    bank = torch.from_numpy(bank)
    t0 = time.perf_counter()
    z = random_projection(bank, 0.9, 22, device=device)  # as training does: dense on the GPU, scikit-learn on the CPU
    projection_s = time.perf_counter() - t0
    projection_peak = peak_rss_mb()
    del bank
    gc.collect()
    reset = reset_peak_rss()  # the greedy's own peak: z plus what the loop allocates
    t0 = time.perf_counter()
    if naive:
        idx = greedy_coreset_naive(z.to(device), picks)
    else:
        idx = greedy_coreset(z, picks, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"n": n, "k": int(z.shape[1]), "picks": picks, "projection_s": projection_s, "greedy_s": seconds,
            "picks_per_s": (picks - 1) / seconds, "first_picks": idx[:50].tolist(),
            "z_mb": z.numel() * 8 / 2**20, "greedy_peak_rss_mb": peak_rss_mb() if reset else None,
            "projection_peak_rss_mb": projection_peak}


def child_metrics(n_maps: int, size: int) -> dict:
    import numpy as np

    from usad.core import metrics

    rng = np.random.default_rng(0)
    labels = (np.arange(n_maps) % 2 == 0).astype(np.int64)  # about half anomalous, like CoalAD (943 / 1754)
    maps = rng.random((n_maps, size, size), dtype=np.float32)
    masks = np.zeros((n_maps, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(labels):
        cy, cx, r = rng.integers(40, size - 40, 2).tolist() + [int(rng.integers(10, 40))]
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        masks[i][blob] = 1
        maps[i][blob] += 0.5
    scores = maps.reshape(n_maps, -1).max(1)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    result = metrics.compute_all(labels, scores, masks, maps)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "inputs_mb": base, **result}


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
    argv = ["-m", "usad.experiments.run", *set_args(pipeline_overrides(root, out, ctx, backbones, precision))]
    res = {**measure(tag, argv, ctx.logs), "steps": logged_steps(ctx.logs / f"{tag}.log")}
    if again:
        res["evaluate_only"] = {**measure(f"{tag}-again", argv, ctx.logs),
                                "steps": logged_steps(ctx.logs / f"{tag}-again.log")}
    return res


def logged_steps(log: Path) -> dict:
    """usad.experiments.run's own step times from its log ("step train maclu: 12.3 s", "usad.experiments.run done in 45.6 s")."""
    text = log.read_text(errors="replace")
    steps = {name: float(v) for name, v in re.findall(r"step (.+?): ([0-9.]+) s", text)}
    done = re.findall(r"usad\.run done in ([0-9.]+) s", text)
    return {**steps, **({"main": float(done[-1])} if done else {})}


def floor(tag: str, root: Path, ctx, backbones: str, precision: str = "fp32") -> dict:
    o = pipeline_overrides(root, ctx.work / "runs" / tag, ctx, backbones, precision)
    res = measure(tag, [__file__, "--child", "floor", json.dumps(o)], ctx.logs)
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
    """usad.experiments.run on the golden fixture per device and precision (``golden_agreement``), then the golden tests
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
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_golden.py"],
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
                runs.append(measure(tag, ["-m", "usad.experiments.run", *config, *o], ctx.logs)["wall_s"])
    return {"device": device, "scripts_s": min(scripts), "usad_run_s": min(runs),
            "usad_run_over_scripts": min(runs) / min(scripts)}


def golden_agreement(ctx, devices: list[str]) -> dict:
    """usad.experiments.run on the shared golden fixture per device and precision, against the authors' reference and
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
                run = measure(tag, ["-m", "usad.experiments.run", "--config", str(REPO / "tests" / "golden.yaml"), *set_args(o),
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


# ------------------------------------------------------------------------------- ratios
def usad_run_training_s(u: dict) -> float:
    """The training share of a usad.experiments.run that trained and evaluated: its wall time less its own logged
    evaluate and report steps (start-up, checks and the three trainings)."""
    return u["wall_s"] - u["steps"]["evaluate"] - u["steps"].get("report", 0.0)


def derive(res: dict) -> None:
    """Ratios from whatever parts the results hold (recomputed after every section)."""
    run = res.get("run", {})
    for p in ("fp32", "bf16"):
        part = run.get(p, {})
        if "floor" in part and "usad_run" in part:
            part["usad_run_over_floor"] = part["usad_run"]["wall_s"] / part["floor"]["wall_s"]
    fp32, scripts = run.get("fp32", {}), run.get("scripts")
    if scripts and "usad_run" in fp32:
        run["scripts_over_usad_run"] = scripts["total_s"] / fp32["usad_run"]["wall_s"]
    if scripts and "floor" in fp32:
        f = fp32["floor"]
        start = f["import_s"] + f["cuda_init_s"]
        run["scripts_train_overhead"] = scripts["train_s"] / (3 * start + f["build_s"] + f["train_forward_s"])
        run["scripts_eval_overhead"] = scripts["evaluate"]["wall_s"] / (start + f["build_s"] + f["test_forward_s"])
        run["scripts_eval_images_per_s"] = f["n_test"] / scripts["evaluate"]["wall_s"]
    bf16 = run.get("bf16", {})
    for part in ("floor", "usad_run"):
        if part in fp32 and part in bf16:
            run[f"bf16_speedup_{part}"] = fp32[part]["wall_s"] / bf16[part]["wall_s"]
    tenth = res.get("tenth", {})
    theirs = tenth.get("authors")
    if theirs:
        if "scripts" in tenth:
            s = tenth["scripts"]
            tenth["scripts_vs_authors"] = {"train_speedup": theirs["train_s"] / s["train_s"],
                                           "eval_speedup": theirs["eval_s"] / s["evaluate"]["wall_s"]}
        if "usad_run" in tenth:
            u = tenth["usad_run"]
            v = tenth["usad_run_vs_authors"] = {"total_speedup": (theirs["train_s"] + theirs["eval_s"]) / u["wall_s"],
                                                "eval_speedup": theirs["eval_s"] / u["evaluate_only"]["wall_s"]}
            if "evaluate" in u.get("steps", {}):
                v["train_speedup"] = theirs["train_s"] / usad_run_training_s(u)


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


def table(res: dict) -> str:
    rows = [("machine", res.get("machine", "(no section measured)"), "")]
    if res.get("env", {}).get("gpu"):
        rows.append(("GPU / torch / date", f"{res['env']['gpu']} / {res['env']['torch']} / {res['date']}", ""))
    for key, g in res.get("golden", {}).items():
        if key == "agreement_skipped":
            rows.append(("golden usad.experiments.run agreement", "skipped: " + g[:90], ""))
            continue
        if key == "startups":
            rows.append((f"fixture (tests/golden), {g['device']}: usad.experiments.run / four scripts",
                         f"{fmt_s(g['usad_run_s'])} / {fmt_s(g['scripts_s'])} = {g['usad_run_over_scripts']:.2f}", "<= 0.75"))
            continue
        if key.startswith("pytest_"):
            rows.append((f"golden tests, device={key[7:]}", f"exit {g['rc']}: {g['summary']}", "pass"))
            continue
        if "error" in g:
            rows.append((f"golden usad.experiments.run {key}", "FAILED: " + short(g["error"]), ""))
            continue
        diff = (f"; max |diff| to CPU fp32 {max(g['max_abs_diff_to_baseline'].values()):.2g}"
                if "max_abs_diff_to_baseline" in g else "")
        rows.append((f"golden usad.experiments.run {key}: worst Pearson / metric delta",
                     f"{g['worst_pearson']:.5f} / {g['worst_metric_delta']:.5f}{diff}", ">= 0.999 / <= 0.005"))
    run = res.get("run", {})
    if run:
        rows.append((f"run: scale {run['scale']} ({run['n_train']} / {run['n_test']}), {run['backbones']} backbones",
                     f"min of {run['repeat']}", ""))
    for p in ("fp32", "bf16"):
        part = run.get(p, {})
        if "floor" in part:
            f = part["floor"]
            rows.append((f"  floor {p}: wall (start-up = import+CUDA+builds; train fwd; test fwd)",
                         f"{fmt_s(f['wall_s'])} ({f['import_s'] + f['cuda_init_s'] + f['build_s']:.1f}; "
                         f"{f['train_forward_s']:.1f}; {f['test_forward_s']:.1f})", ""))
        if "usad_run" in part:
            rows.append((f"  python -m usad.run {p}", f"{fmt_s(part['usad_run']['wall_s'])}, {mem(part['usad_run'])}",
                         "<= 60 s (full, GPU); GPU <= 20 GB, RSS <= 16 GB"))
        if "usad_run_over_floor" in part:
            rows.append((f"  usad.experiments.run / floor {p}", f"{part['usad_run_over_floor']:.2f}", "<= 1.5"))
    if "scripts" in run:
        s = run["scripts"]
        walls = ", ".join(f"{s[k]['wall_s']:.1f}" for k in SCRIPTS)
        rows.append(("  four scripts (train x3 + test_fusion.py)",
                     f"{fmt_s(s['total_s'])} ({walls}); worst {mem(worst([s[k] for k in SCRIPTS]))}",
                     "<= 100 s (full, GPU)"))
    for key, label, target in (("scripts_over_usad_run", "four scripts / usad.experiments.run", ""),
                               ("scripts_train_overhead", "training scripts / (3 start-ups + builds + train fwd)", "<= 1.2 (CPU)"),
                               ("scripts_eval_overhead", "test_fusion.py / (start-up + builds + test fwd)", "<= 1.1 (CPU)"),
                               ("scripts_eval_images_per_s", "test_fusion.py images/s", ""),
                               ("bf16_speedup_floor", "floor fp32 / bf16", ""),
                               ("bf16_speedup_usad_run", "usad.experiments.run fp32 / bf16", "")):
        if key in run:
            rows.append((f"  {label}", f"{run[key]:.2f}", target))
    tenth = res.get("tenth", {})
    if tenth:
        rows.append((f"tenth: {tenth.get('scale', 'tenth')} ({tenth['n_train']} / {tenth['n_test']}), "
                     f"{tenth['backbones']} backbones", "", ""))
        if "authors" in tenth:
            a = tenth["authors"]
            rows.append(("  authors' code: training (3 scripts) / evaluation", f"{fmt_s(a['train_s'])} / {fmt_s(a['eval_s'])}", ""))
        if "scripts" in tenth:
            s = tenth["scripts"]
            rows.append(("  our four scripts: training / evaluation", f"{fmt_s(s['train_s'])} / {fmt_s(s['evaluate']['wall_s'])}", ""))
        if "usad_run" in tenth:
            u = tenth["usad_run"]
            train = f" (training share {fmt_s(usad_run_training_s(u))})" if "evaluate" in u.get("steps", {}) else ""
            rows.append(("  usad.experiments.run: all / evaluation alone (models there)",
                         f"{fmt_s(u['wall_s'])}{train} / {fmt_s(u['evaluate_only']['wall_s'])}", ""))
        if "scripts_vs_authors" in tenth:
            v = tenth["scripts_vs_authors"]
            rows.append(("  speed-up, four scripts vs authors: training / evaluation",
                         f"x{v['train_speedup']:.2f} / x{v['eval_speedup']:.2f}", "train >= 3 (CPU, GPU); eval >= 5 (GPU)"))
        if "usad_run_vs_authors" in tenth:
            v = tenth["usad_run_vs_authors"]
            train = f"x{v['train_speedup']:.2f}" if "train_speedup" in v else "-"
            rows.append(("  speed-up, usad.experiments.run vs authors: all / training / evaluation",
                         f"x{v['total_speedup']:.2f} / {train} / x{v['eval_speedup']:.2f}",
                         "train >= 3 (CPU, GPU); eval >= 5 (GPU)"))
    for scale, c in res.get("coreset", {}).items():
        rows += [(f"coreset {scale}: picks/s fast / authors",
                  f"{c['fast']['picks_per_s']:.1f} / {c['naive']['picks_per_s']:.1f} "
                  f"(x{c['speedup']:.1f}, same picks: {c['same_first_picks']})", ""),
                 (f"coreset {scale}: greedy peak RSS fast / authors (z alone)",
                  f"{c['fast']['greedy_peak_rss_mb'] or 0:.0f} / {c['naive']['greedy_peak_rss_mb'] or 0:.0f} MB "
                  f"({c['fast']['z_mb']:.0f} MB); projection peak {c['fast']['projection_peak_rss_mb']:.0f} MB", "")]
    if "metrics" in res:
        m = res["metrics"]
        rows.append(("metrics, 1,754 maps 406x406", f"{m['seconds']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB "
                     f"(inputs {m['inputs_mb']:.0f} MB)", "< 60 s, < 4 GB"))
    for name, error in res.get("errors", {}).items():
        rows.append((f"FAILED: {name}", short(error), ""))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{a.ljust(w0)}  {b.ljust(w1)}  {c}".rstrip() for a, b, c in rows)


def write_results(path: Path, res: dict) -> None:
    from usad.core.outputs import write_json  # atomic: a benchmark killed mid-write keeps the previous file

    write_json(path, res)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        section, args = sys.argv[2], sys.argv[3:]
        children = {"env": child_env, "floor": lambda: child_floor(json.loads(args[0])),
                    "golden_compare": lambda: child_golden_compare(*args),
                    "coreset": lambda: child_coreset(int(args[0]), int(args[1]), int(args[2]), args[3] == "1", args[4]),
                    "metrics": lambda: child_metrics(int(args[0]), int(args[1]))}
        print(json.dumps(children[section]()))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--only", default="run,tenth,golden,coreset,metrics",
                        help="comma-separated sections: data, golden, run, tenth, coreset, metrics")
    parser.add_argument("--scale", choices=list(SCALES), help="the run section's set (default: small on CPU, full on CUDA)")
    parser.add_argument("--backbones", choices=list(BACKBONES), default="full", help="the run section's backbones")
    parser.add_argument("--tenth-backbones", choices=list(BACKBONES), help="default: tiny on CPU, full on CUDA")
    parser.add_argument("--tenth-scale", choices=list(SCALES), default="tenth", help="the tenth section's set "
                        "(another scale for dry runs only)")
    parser.add_argument("--parts", default="floor,usad_run,scripts", help="the run section's parts")
    parser.add_argument("--tenth-parts", default="usad_run,scripts,authors", help="the tenth section's parts")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or fp32,bf16 (run: floor and usad_run; golden)")
    parser.add_argument("--batch-size", type=int, default=None, help="data.batch_size (default: the config's)")
    parser.add_argument("--repeat", type=int, default=None, help="run section: interleaved runs, minimum kept "
                        "(default 2 on CPU, 1 on CUDA)")
    parser.add_argument("--no-full-coreset", action="store_true", help="skip the 1.12M-patch coreset case (~10 GB RAM)")
    parser.add_argument("--authors", type=Path, default=AUTHORS, help=f"the authors' code (default {AUTHORS})")
    parser.add_argument("--work", type=Path, default=None, help="generated sets, runs and logs (kept; default: "
                        "/tmp/usad-bench-<device>)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--update", action="store_true", help="merge into an existing --out file")
    parser.add_argument("--table", metavar="FILE", help="only print the table of a results file")
    parser.add_argument("--no-table", action="store_true", help="do not print the table at the end")
    ctx = parser.parse_args()
    if ctx.table:
        print(table(json.loads(Path(ctx.table).read_text())))
        return
    on_gpu = ctx.device != "cpu"
    ctx.scale = ctx.scale or ("full" if on_gpu else "small")
    ctx.tenth_backbones = ctx.tenth_backbones or ("full" if on_gpu else "tiny")
    ctx.repeat = ctx.repeat or (1 if on_gpu else 2)
    ctx.precisions = ctx.precision.split(",")
    ctx.parts, ctx.tenth_parts = ctx.parts.split(","), ctx.tenth_parts.split(",")
    ctx.work = (ctx.work or Path(f"/tmp/usad-bench-{ctx.device.replace(':', '')}")).resolve()
    ctx.logs = ctx.work / "logs"
    ctx.authors = ctx.authors.resolve()
    out = Path(ctx.out or REPO / "benchmarks" / f"results_{'cuda' if on_gpu else 'cpu'}.json")
    res = json.loads(out.read_text()) if ctx.update and out.is_file() else {}
    res.update({"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                           f"device={ctx.device}",
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "batch_size": ctx.batch_size or "config default"})
    runners = {"data": section_data, "golden": section_golden, "run": section_run, "tenth": section_tenth,
               "coreset": section_coreset, "metrics": lambda c: child("metrics", "1754", "406")}
    sections = ctx.only.split(",")
    unknown = [s for s in sections if s not in runners]
    if unknown:
        parser.error(f"unknown section(s) {unknown}: choose from {list(runners)}")
    if "env" not in res or not ctx.update:
        res["env"] = child("env")
    for name in sections:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            new, old = runners[name](ctx), res.get(name, {})
            same_set = all(old.get(k) == new.get(k) for k in ("scale", "backbones"))  # else nothing to merge with
            res[name] = merge(old, new) if ctx.update and same_set else new
            res.get("errors", {}).pop(name, None)
        except Exception as e:  # one failing section (e.g. out of memory) keeps the others' figures
            res.setdefault("errors", {})[name] = str(e)[-2000:]
            print(f"section {name} failed: {str(e)[-1500:]}", file=sys.stderr)
        derive(res)
        write_results(out, res)  # after every section: a run stopped later keeps what was measured
    if not ctx.no_table:
        print(table(res))
    print(f"written to {out}; logs in {ctx.logs}")


if __name__ == "__main__":
    main()
