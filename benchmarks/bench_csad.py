"""CSAD speed: our inference and LGST training step against the official code's, same machine, same images.

Standalone (python benchmarks/bench_csad.py [--authors ../shared/authors/csad] [--device cpu] [--out FILE]):
- inference: per image (batch 1), WideResNet-50 backbone + segmentor + patch histogram + LGST + fusion;
  theirs is their one-module inference (``models/onnx_model.py: CSAD_ONNX``, the model their export / speed
  scripts time), ours ``CSAD.branch_scores`` + ``CSAD.fuse``. Full-size networks with seeded random weights (the
  students and the teacher projection get the same weights on both sides, ``tools/golden_csad.generated_state``).
- one LGST training step: theirs ``CSAD.train`` (batch 2, penalty image, jitter; per iteration, after a warm-up
  iteration), ours ``lgst_train.train_lgst`` with the same settings.
Their code runs in a subprocess (stubs as in tools/golden_csad.py). Prints a JSON with the times and the ratios
theirs / ours (> 1: ours faster). The CSAD paper's 8.9 ms / image is on an RTX 3090: see benchmarks/gpu.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tools")]

import golden_csad as gc  # noqa: E402

NUM_CLASSES = 5
REPEAT = 5
TRAIN_ITERS = 3


def scenes(root: Path) -> Path:
    from usad.core.data.loco_synthetic import make_synthetic_loco

    return make_synthetic_loco(root, category="pushpins", n_train=4, n_validation=2, n_test_good=2, n_logical=1,
                               n_structural=1, size=256, seed=0)


def theirs(spec: dict) -> None:
    """Child: their inference module and training loop, timed."""
    import torch

    work, authors, seed = Path(spec["work"]), Path(spec["authors"]), 0
    os.chdir(work)
    sys.path.insert(0, str(authors))
    gc._install_stubs(work / "penalty")
    import timm

    real = timm.create_model
    timm.create_model = lambda name, pretrained=False, **kw: real("wide_resnet50_2", pretrained=False, **kw)
    torch.set_num_threads(spec["threads"])
    import models.model as mm

    gc._after_init(mm.LocalStudent, lambda m: m.load_state_dict(gc.generated_state(m, "lgst.local", seed)))
    gc._after_init(mm.AutoEncoder, lambda m: m.load_state_dict(gc.generated_state(m, "lgst.global_", seed)))
    from models.onnx_model import CSAD_ONNX
    from PIL import Image

    files = sorted((work / "data" / "pushpins" / "test").glob("*/*.png"))
    norm = lambda f: gc_norm(np.asarray(Image.open(f).convert("RGB").resize((256, 256), Image.BILINEAR)))  # noqa
    x = [norm(f) for f in files]
    model = CSAD_ONNX(dim=512, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        model(x[0])
        t = time.perf_counter()
        for _ in range(REPEAT):
            for xi in x:
                model(xi)
        infer = (time.perf_counter() - t) / (REPEAT * len(x))
    import CSAD as csad_mod

    config = csad_mod.read_config(str(authors / "configs" / "mvtecloco_train.yaml"))
    config.update({"category": "pushpins", "seed": seed, "run_name": "LGST", "eval_freq": 10 ** 9,
                   "output_dir": str(work / "output"), "ckpt_dir": str(work / "ckpt")})
    config["Datasets"]["train"]["root"] = str(work / "data")
    config["Model"]["iterations"] = TRAIN_ITERS + 1
    csad_mod.config = config
    c = csad_mod.CSAD(config)
    stamps = []
    real_step = c.optimizer.step

    def step(*a, **k):
        out = real_step(*a, **k)
        stamps.append(time.perf_counter())
        return out

    c.optimizer.step = step
    c.train()
    (work / "theirs.json").write_text(json.dumps({"infer_s": infer, "step_s": (stamps[-1] - stamps[0]) / TRAIN_ITERS}))


def gc_norm(u8: np.ndarray):
    import torch

    from usad.models.csad.lgst_train import normalise

    return normalise(torch.from_numpy(u8).permute(2, 0, 1)[None].float().div(255))


def ours(data: Path, work: Path, threads: int, device: str) -> dict:
    import torch

    from usad.core.config import load_config
    from usad.models.csad.histogram import PatchHistogram
    from usad.models.csad.lgst_train import train_lgst
    from usad.models.csad.method import CSAD

    torch.set_num_threads(threads)
    cfg = load_config(None, ["csad.pretrained=false", f"device={device}", "data.batch_size=1",
                             f"csad.lgst.penalty_dir={work / 'penalty'}", f"csad.lgst.iterations={TRAIN_ITERS + 1}"])
    m = CSAD(cfg, torch.device(device))
    m.seg = m.segmentor()
    m.seg.build_decoder(NUM_CLASSES)
    m.lgst = gc.our_lgst(cfg.csad, 0).to(device)
    m.lgst.quantiles.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    train = m.images(sorted((data / "train" / "good").glob("*.png")))
    m.hist = PatchHistogram(NUM_CLASSES, [256, 128], ["mahalanobis", "mahalanobis"]).fit(m.segmentation(train))
    m.hist_stats, m.branch_stats = np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])
    files = sorted((data / "test").glob("*/*.png"))
    x = [m.images([f]) for f in files]
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)  # noqa: E731
    m.fuse(*m.branch_scores(x[0])[:2])
    sync()
    t = time.perf_counter()
    for _ in range(REPEAT):
        for xi in x:
            m.fuse(*m.branch_scores(xi)[:2])
    sync()
    infer = (time.perf_counter() - t) / (REPEAT * len(x))
    from usad.models.csad.lgst_train import penalty_files

    stamps = []
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        sync()
        stamps.append(time.perf_counter())
        return out

    torch.optim.Adam.step = step
    try:
        train_lgst(m.lgst, cfg.csad.lgst, lambda z: m.seg.encode(z)[1:], train,
                   penalty_files(work / "penalty", "penalty"), 0, progress=False)
    finally:
        torch.optim.Adam.step = real_step
    return {"infer_s": infer, "step_s": (stamps[-1] - stamps[0]) / TRAIN_ITERS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", type=Path, default=REPO.parent / "shared" / "authors" / "csad")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_csad_") as tmp:
        tmp = Path(tmp)
        data = scenes(tmp / "generated")
        work = tmp / "work"
        work.mkdir()
        for name in ("configs", "models", "CSAD.py"):
            (work / name).symlink_to(gc.check_authors(a.authors) / name)
        import shutil

        shutil.copytree(data, work / "data" / "pushpins")
        gc.penalty_images(work / "penalty", 0)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
        spec = {"work": str(work), "authors": str(a.authors.resolve()), "threads": a.threads}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=work,
                              capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        their = json.loads((work / "theirs.json").read_text())
        our = ours(data, work, a.threads, a.device)
    result = {"machine": f"{a.device}, {a.threads} threads", "theirs": their, "ours": our,
              "infer_ratio_theirs_over_ours": their["infer_s"] / our["infer_s"],
              "step_ratio_theirs_over_ours": their["step_s"] / our["step_s"]}
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        theirs(json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
