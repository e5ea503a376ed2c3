"""Speed and memory of the usad pipeline, with no downloads. Prints ratios and writes JSON.

    python benchmarks/run.py [--device cpu|cuda] [--out benchmarks/results_cpu.json] [--only overhead,coreset,metrics,tenth]

(a) overhead: pipeline time / the floor (the three backbones' forward passes
    plus one library import and one model build per script), for training and
    for evaluation, at the configured batch size, on 32 train / 16 test
    generated images with FULL-SIZE random backbones (ViT-S, ViT-B, WRN50-2).
(b) coreset: picks/s of the exact fast greedy vs the authors' loop, and peak
    memory, at 112k and 1.12M patches (1/10 and full CoalAD).
(c) metrics: time and peak memory of all four metrics on 1,754 generated
    406 x 406 maps (the CoalAD test set).
(d) images/s of full evaluation (from (a)), and the 1/10-CoalAD run
    (249 train / 175 test, tiny backbones so the rest of the pipeline shows).
Each measurement runs in its own process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL_SIZE = ["maclu.pretrained=false", "ma2patch.pretrained=false", "patchcore.pretrained=false"]
TINY = ["maclu.pretrained=false", "maclu.model_kwargs={depth: 2, embed_dim: 16, num_heads: 2, init_values: 1.0}",
        "ma2patch.pretrained=false", "ma2patch.model_kwargs={depth: 2, embed_dim: 24, num_heads: 2, init_values: 1.0}",
        "patchcore.pretrained=false", "patchcore.backbone=resnet18"]
SCRIPTS = {"maclu": "train_ma_clu.py", "ma2patch": "train_ma2patch.py", "patchcore": "train_pc.py"}


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


def child(section: str, *args: str) -> dict:
    """Run one measurement in a fresh process; it prints one JSON line last."""
    out = subprocess.run([sys.executable, __file__, "--child", section, *args], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark {section} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_script(script: str, overrides: list[str]) -> float:
    argv = [sys.executable, str(REPO / script)] + [a for o in overrides for a in ("--set", o)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- children
def child_import() -> dict:
    t0 = time.perf_counter()
    import timm, torch, torchvision  # noqa: F401,E401  the libraries every script loads
    import usad.pipeline  # noqa: F401
    return {"seconds": time.perf_counter() - t0}


def child_floor(overrides: list[str]) -> dict:
    """Model builds and the bare forward passes over the train and test images, at the batch size."""
    import torch

    from usad.config import load_config
    from usad.pipeline import build_branch
    from usad.patchcore import training_subset

    cfg = load_config(None, overrides)
    torch.set_grad_enabled(False)
    n_train = len(list((Path(cfg.data.root) / cfg.data.category / "train" / "good").glob("*.png")))
    n_test = sum(1 for _ in (Path(cfg.data.root) / cfg.data.category / "test").rglob("*.png"))
    result = {"build": 0.0, "train_forward": 0.0, "test_forward": 0.0}
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    for name in ("maclu", "ma2patch", "patchcore"):
        t0 = time.perf_counter()
        backbone = build_branch(name, cfg, device).backbone
        result["build"] += time.perf_counter() - t0
        size = cfg[name].image_size
        n = len(training_subset(n_train, cfg.patchcore.train_ratio, cfg.seed)) if name == "patchcore" else n_train
        for key, count, s in (("train_forward", n, size), ("test_forward", n_test, size)):
            t0 = time.perf_counter()
            for start in range(0, count, cfg.data.batch_size):
                x = torch.randn(min(cfg.data.batch_size, count - start), 3, s, s, device=device)
                backbone(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            result[key] += time.perf_counter() - t0
    return result


def child_coreset(n: int, d: int, picks: int, naive: bool, device: str) -> dict:
    import numpy as np
    import torch

    from usad.sampler import greedy_coreset, greedy_coreset_naive, random_projection

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, d)).astype(np.float32)
    bank = np.empty((n, d), np.float32)  # clustered patches, generated in blocks (1.12M x 1536 is 6.9 GB)
    for a in range(0, n, 65536):
        rows = min(65536, n - a)
        bank[a:a + rows] = centres[rng.integers(0, 64, rows)] + 0.3 * rng.standard_normal((rows, d), dtype=np.float32)
    bank = torch.from_numpy(bank)
    t0 = time.perf_counter()
    z = random_projection(bank, 0.9, 22)
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

    from usad import metrics

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


# ------------------------------------------------------------------------------ sections
def make_data(root: Path, n_train: int, n_test: int, size: int = 256) -> None:
    from usad.data.synthetic import make_synthetic_coalad

    make_synthetic_coalad(root, n_train=n_train, n_test_good=n_test // 2, n_test_anomalous=n_test - n_test // 2, size=size)


def pipeline_times(root: Path, overrides: list[str]) -> dict:
    times = {b: run_script(s, overrides) for b, s in SCRIPTS.items()}
    times["evaluate"] = run_script("test_fusion.py", overrides)
    return times


def section_overhead(tmp: Path, device: str, batch: int, repeat: int) -> dict:
    """Each timing is the minimum of ``repeat`` runs (a shared VM's speed drifts by 10-20 % between runs)."""
    root = tmp / "small"
    make_data(root, 32, 16)
    overrides = FULL_SIZE + [f"data.root={root}", "data.download=false", f"paths.models={tmp / 'm'}",
                             f"paths.results={tmp / 'r'}", f"device={device}", f"data.batch_size={batch}"]
    runs = []
    for _ in range(repeat):  # interleaved, so that a slow spell hits floor and pipeline alike
        runs.append((child("import")["seconds"], child("floor", json.dumps(overrides)), pipeline_times(root, overrides)))
    imp = min(r[0] for r in runs)
    floor = {k: min(r[1][k] for r in runs) for k in runs[0][1]}
    pipe = {k: min(r[2][k] for r in runs) for k in runs[0][2]}
    train_floor = 3 * imp + floor["build"] + floor["train_forward"]
    eval_floor = imp + floor["build"] + floor["test_forward"]
    train_time = pipe["maclu"] + pipe["ma2patch"] + pipe["patchcore"]
    return {"repeat": repeat, "import_s": imp, "floor": floor, "pipeline_s": pipe,
            "train_ratio": train_time / train_floor, "eval_ratio": pipe["evaluate"] / eval_floor,
            "eval_images_per_s": 16 / pipe["evaluate"]}


def section_tenth(tmp: Path, device: str, batch: int) -> dict:
    root = tmp / "tenth"
    make_data(root, 249, 175)
    overrides = TINY + [f"data.root={root}", "data.download=false", f"paths.models={tmp / 'm10'}",
                        f"paths.results={tmp / 'r10'}", f"device={device}", f"data.batch_size={batch}"]
    pipe = pipeline_times(root, overrides)
    train = pipe["maclu"] + pipe["ma2patch"] + pipe["patchcore"]
    return {"pipeline_s": pipe, "train_s": train, "eval_s": pipe["evaluate"],
            "authors_train_s": 250.0, "authors_eval_s": 90.0,
            "train_speedup_vs_authors": 250.0 / train, "eval_speedup_vs_authors": 90.0 / pipe["evaluate"],
            "eval_images_per_s": 175 / pipe["evaluate"]}


def section_coreset(device: str, full: bool) -> dict:
    out = {}
    fast = child("coreset", "112050", "1536", "1120", "0", device)
    naive = child("coreset", "112050", "1536", "60", "1", device)
    out["112k"] = {"fast": fast, "naive": naive, "speedup": fast["picks_per_s"] / naive["picks_per_s"],
                   "same_first_picks": fast["first_picks"][:60] == naive["first_picks"][:60]}
    if full:
        fast = child("coreset", "1120500", "1536", "200", "0", device)
        naive = child("coreset", "1120500", "1536", "12", "1", device)
        out["1.12M"] = {"fast": fast, "naive": naive, "speedup": fast["picks_per_s"] / naive["picks_per_s"],
                        "same_first_picks": fast["first_picks"][:12] == naive["first_picks"][:12],
                        "estimated_full_coreset_s": 11205 / fast["picks_per_s"]}
    return out


def table(res: dict) -> str:
    rows = [("machine", res["machine"])]
    if "overhead" in res:
        o = res["overhead"]
        rows += [("(a) train overhead ratio (<= 1.2)", f"{o['train_ratio']:.3f}"),
                 ("(a) eval overhead ratio (<= 1.1)", f"{o['eval_ratio']:.3f}"),
                 ("(d) eval images/s, full-size random backbones", f"{o['eval_images_per_s']:.2f}")]
    if "coreset" in res:
        for scale, c in res["coreset"].items():
            rows += [(f"(b) coreset {scale}: picks/s fast / authors", f"{c['fast']['picks_per_s']:.1f} / {c['naive']['picks_per_s']:.1f} "
                      f"(x{c['speedup']:.1f}, same picks: {c['same_first_picks']})"),
                     (f"(b) coreset {scale}: greedy peak RSS fast / authors (z alone)",
                      f"{c['fast']['greedy_peak_rss_mb']:.0f} / {c['naive']['greedy_peak_rss_mb']:.0f} MB "
                      f"({c['fast']['z_mb']:.0f} MB); projection peak {c['fast']['projection_peak_rss_mb']:.0f} MB")]
    if "metrics" in res:
        m = res["metrics"]
        rows += [("(c) metrics, 1,754 maps 406x406", f"{m['seconds']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB "
                  f"(inputs {m['inputs_mb']:.0f} MB)")]
    if "tenth" in res:
        t = res["tenth"]
        rows += [("(d) 1/10 CoalAD train s (authors ~250)", f"{t['train_s']:.1f} (x{t['train_speedup_vs_authors']:.1f})"),
                 ("(d) 1/10 CoalAD eval s (authors ~90)", f"{t['eval_s']:.1f} (x{t['eval_speedup_vs_authors']:.1f})")]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a.ljust(w)}  {b}" for a, b in rows)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        section, args = sys.argv[2], sys.argv[3:]
        if section == "import":
            res = child_import()
        elif section == "floor":
            res = child_floor(json.loads(args[0]))
        elif section == "coreset":
            res = child_coreset(int(args[0]), int(args[1]), int(args[2]), args[3] == "1", args[4])
        else:
            res = child_metrics(int(args[0]), int(args[1]))
        print(json.dumps(res))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--only", default="overhead,coreset,metrics,tenth")
    parser.add_argument("--no-full-coreset", action="store_true", help="skip the 1.12M-patch coreset case (~10 GB RAM)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per overhead timing (the minimum is kept)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--update", action="store_true", help="keep the other sections of an existing --out file")
    args = parser.parse_args()
    sections = args.only.split(",")
    out = Path(args.out or REPO / "benchmarks" / f"results_{args.device}.json")
    res = json.loads(out.read_text()) if args.update and out.is_file() else {}
    res.update({"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                           f"device={args.device}", "batch_size": args.batch_size})
    res.pop("errors", None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runners = {"overhead": lambda: section_overhead(tmp, args.device, args.batch_size, args.repeat),
                   "coreset": lambda: section_coreset(args.device, not args.no_full_coreset),
                   "metrics": lambda: child("metrics", "1754", "406"),
                   "tenth": lambda: section_tenth(tmp, args.device, args.batch_size)}
        for name in sections:
            try:
                res[name] = runners[name]()
            except Exception as e:  # one failing section (e.g. out of memory) keeps the others' figures
                res.setdefault("errors", {})[name] = str(e)[-2000:]
                print(f"section {name} failed: {str(e)[-500:]}", file=sys.stderr)
    out.write_text(json.dumps(res, indent=2) + "\n")  # a benchmark output, not an artifact: rewritten whole
    print(table(res))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
