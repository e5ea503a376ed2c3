"""Make the compact golden fixture (tests/golden) from the authors' code.

    python tools/make_golden.py --authors /path/to/USAD-clone --out tests/golden
    python tools/make_golden.py --method csad|npgmf ...   (another method's fixture: tools/golden_<method>.py)

USAD's fixture (the default ``--method usad``):

1. scenes: ``usad.core.data.synthetic`` (seeded) in the CoalAD layout under ``OUT/data``;
2. tiny seeded checkpoints under ``OUT/weights`` (``authors_harness.tiny_weights``);
3. the authors' four scripts run on them through ``tools/authors_harness.py``:
   once with the training ViTs built at the branch size (``--vit-train-size
   branch``, this project's one ViT departure: the reference), once exactly as
   they are (``authors``: the size of that departure);
4. ``OUT/reference.npz`` (format below) and ``OUT/manifest.json`` (their commit,
   seeds, parameters, versions, the departure's measured size).

reference.npz holds what ../shared/golden/reference.npz holds, with the maps
made compact: every map as the Hadamard product receives it (branch maps
resized to the evaluation size by the authors' own fusion code; ``m_fused``
as their fusion returns it), averaged over ``map_pool`` x ``map_pool`` blocks
and quantised per image (``MAP_BITS``: 8 bits, 16 for the heavy-tailed fused
map): ``<key>_q`` (uint8 / uint16), ``<key>_lo`` and ``<key>_step`` (float32,
per image), so ``map = lo + q * step``. ``mask`` is
uint8 at the evaluation size. ``asis_*`` are the scores and metrics of the
as-is run. Unchanged keys: files, label, s_*, pc_train_files, pc_memory_bank,
kmeans_centers, fg_cluster, metric_*.

The PRO-AUC comes from their ``compute_pro`` when pandas and scikit-image can
be imported (put them on PYTHONPATH, e.g. ``pip install --target DIR pandas
scikit-image``); manifest.json says which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(REPO)]

import authors_harness as harness  # noqa: E402

SCORES = ("s_obj", "s_attr", "s_pc", "s_fused")
MAPS = {"m_obj": "e_obj", "m_attr": "e_attr", "m_pc": "e_pc", "m_fused": "m_fused"}  # key -> map at eval size
METRICS = ("metric_image_auroc_fused", "metric_image_auroc_obj", "metric_image_auroc_pc", "metric_pixel_auroc_fused",
           "metric_pro_auc_official")
MAP_BITS = {"m_obj": 8, "m_attr": 8, "m_pc": 8, "m_fused": 16}  # 8 bits would cost m_fused 1.5e-4 of Pearson


def pool(maps: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks (the evaluation size must be a multiple of k)."""
    n, h, w = maps.shape
    return maps.reshape(n, h // k, k, w // k, k).astype(np.float64).mean(axis=(2, 4))


def quantise(maps: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: lo + q * step with q in 0 .. 2^bits - 1 (uint8 or uint16)."""
    lo = maps.min(axis=(1, 2))
    step = np.maximum(maps.max(axis=(1, 2)) - lo, 1e-30) / (2 ** bits - 1)
    q = np.rint((maps - lo[:, None, None]) / step[:, None, None])
    return q.astype(np.uint8 if bits == 8 else np.uint16), lo.astype(np.float32), step.astype(np.float32)


def dequantise(ref, key: str) -> np.ndarray:
    return ref[f"{key}_lo"][:, None, None] + ref[f"{key}_q"].astype(np.float32) * ref[f"{key}_step"][:, None, None]


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def compact(arrays: dict, map_pool: int) -> tuple[dict, dict]:
    """The reference in the compact format, and what the compaction costs (Pearson of each stored map with the
    unrounded pooled map)."""
    out = {k: arrays[k] for k in ("files", "label", *SCORES, "pc_train_files", "pc_memory_bank", "kmeans_centers",
                                  "fg_cluster", *METRICS)}
    out["mask"] = arrays["mask"].astype(np.uint8)
    out["map_pool"] = np.int64(map_pool)
    cost = {}
    for key, source in MAPS.items():
        pooled = pool(arrays[source], map_pool)
        q, lo, step = quantise(pooled, MAP_BITS[key])
        out[f"{key}_q"], out[f"{key}_lo"], out[f"{key}_step"] = q, lo, step
        stored = dequantise(out, key)
        cost[key] = {"pearson_stored_vs_pooled": pearson(stored, pooled),
                     "max_abs_stored_vs_pooled": float(np.abs(stored - pooled).max())}
    return out, cost


def departure(asis: dict, ref: dict) -> dict:
    """How far their pipeline moves with the training ViTs built at timm's default size (as-is) instead of the branch size."""
    size = {key: {"pearson": pearson(asis[src], ref[src]), "max_abs": float(np.abs(asis[src] - ref[src]).max())}
            for key, src in {**{s: s for s in SCORES}, **MAPS}.items()}  # maps at the evaluation size
    size.update({key: {"as_is": float(asis[key]), "branch": float(ref[key]), "diff": float(asis[key] - ref[key])}
                 for key in METRICS})
    size["kmeans_centers"] = {"max_abs": float(np.abs(asis["kmeans_centers"] - ref["kmeans_centers"]).max())}
    return size


def versions() -> dict:
    import PIL
    import sklearn
    import timm
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "pillow": PIL.__version__}


def make_golden(authors: Path, out: Path, n_train: int, n_test_good: int, n_test_anomalous: int, size: int,
                data_seed: int, weights_seed: int, map_pool: int, work: Path | None = None) -> dict:
    from usad.core.data.synthetic import make_synthetic_coalad

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_coalad(out, "data", n_train, n_test_good, n_test_anomalous, size, seed=data_seed,
                                 overwrite=True)
    weights = out / "weights"
    if weights.exists():
        shutil.rmtree(weights)
    harness.tiny_weights(weights, weights_seed)
    with tempfile.TemporaryDirectory(prefix="make_golden-") as tmp:
        work = Path(work or tmp)
        runs = {}
        for mode in ("branch", "authors"):
            runs[mode] = harness.extract(authors, data, work / mode, "golden", weights, device="cpu",
                                         vit_train_size=mode)
            print(f"ran the authors' code ({mode} training size)", flush=True)
    ref, asis = runs["branch"]["arrays"], runs["authors"]["arrays"]
    arrays, cost = compact(ref, map_pool)
    for key in (*SCORES, *METRICS):
        arrays[f"asis_{key}"] = asis[key]
    tmp_npz = out / "reference.tmp.npz"
    np.savez_compressed(tmp_npz, **arrays)
    os.replace(tmp_npz, out / "reference.npz")
    meta = runs["branch"]["meta"]
    manifest = {
        "authors_commit": meta["authors_commit"],
        "command": "python tools/make_golden.py --authors DIR --out tests/golden" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in (("n_train", n_train), ("n_test_good", n_test_good),
                                                         ("n_test_anomalous", n_test_anomalous), ("size", size),
                                                         ("data_seed", data_seed), ("weights_seed", weights_seed),
                                                         ("map_pool", map_pool))),
        "data": {"generator": "usad.core.data.synthetic.make_synthetic_coalad", "category": "data", "n_train": n_train,
                 "n_test_good": n_test_good, "n_test_anomalous": n_test_anomalous, "size": size, "seed": data_seed},
        "weights": {"seed": weights_seed, "generator": "tools/authors_harness.py tiny_weights",
                    "maclu": {"timm": harness.VIT_S, **harness.TINY_VITS[harness.VIT_S][1]},
                    "ma2patch": {"timm": harness.VIT_B, **harness.TINY_VITS[harness.VIT_B][1]},
                    "patchcore": {"torchvision": harness.TINY_RESNET[0], "left_out": list(harness.RESNET_UNUSED)}},
        "authors_run": {"device": meta["device"], "vit_train_size": "branch", "paper_defaults": True,
                        "pro_auc_source": meta["pro_source"]},
        "maps": {"map_pool": map_pool, "bits": MAP_BITS, "cost": cost},
        "departure_vit_train_size": departure(asis, ref),
        "versions": versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


OTHER_METHODS = ("csad", "npgmf")  # each has tools/golden_<method>.py with its own main(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--method" in argv:
        i = argv.index("--method")
        method = argv[i + 1] if i + 1 < len(argv) else ""
        del argv[i:i + 2]
        if method in OTHER_METHODS:
            import importlib
            return importlib.import_module(f"golden_{method}").main(argv)
        if method != "usad":
            print(f"error: --method must be one of usad, {', '.join(OTHER_METHODS)}; got {method!r}", file=sys.stderr)
            return 2
    p = argparse.ArgumentParser(prog="python tools/make_golden.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", required=True, type=Path, help="a clone of github.com/xjpp2016/USAD")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "golden")
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test-good", type=int, default=4)
    p.add_argument("--n-test-anomalous", type=int, default=4)
    p.add_argument("--size", type=int, default=128, help="scene size in pixels (square)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--weights-seed", type=int, default=0)
    p.add_argument("--map-pool", type=int, default=2, help="maps averaged over k x k blocks (406 / k must be whole)")
    p.add_argument("--work", type=Path, help="keep the authors' working folders here (default: a temporary folder)")
    a = p.parse_args(argv)
    try:
        manifest = make_golden(a.authors, a.out, a.n_train, a.n_test_good, a.n_test_anomalous, a.size, a.data_seed,
                               a.weights_seed, a.map_pool, a.work)
    except harness.HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("authors_commit", "maps", "departure_vit_train_size")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
