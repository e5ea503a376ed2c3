"""What the benchmark measures inside one fresh process (``benchmarks/run.py --child SECTION``): the backbone
floor, golden agreement, the coreset sampler and the metrics."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from harness import peak_rss_mb, reset_peak_rss
from sections import GOLDEN, GOLDEN_KEYS, METRIC_TOL, PEARSON_MIN, TRAINING


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
    import timm  # noqa: F401,E401  the libraries every script loads
    import torch

    import usad.models.usad.branches  # noqa: F401
    result = {"import_s": time.perf_counter() - t0, "cuda_init_s": 0.0, "build_s": 0.0,
              "train_forward_s": 0.0, "test_forward_s": 0.0}

    from usad.core.backbones import resolve_device
    from usad.core.config import load_config
    from usad.models.usad.branches import build_branch
    from usad.models.usad.patchcore import training_subset

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

    from usad.core.sampler import (
        greedy_coreset,
        greedy_coreset_naive,
        random_projection,
    )

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
