"""Run the official code of SimpleNet, RD++, CKAAD and ISSTAD offline, on a CoalAD / MVTec-layout folder.

The USAD paper's Table 1 ran these four baselines with "their official
implementations with recommended settings". This tool runs that code, never
copied into this project, from a clone the user made (default
``../shared/authors/<name>``; ``/work/shared/authors/ABOUT.md`` lists the
pinned commits), unmodified: every change below is made from outside, in the
child process that runs it, before or around their functions.

    simplenet  github.com/DonaldRR/SimpleNet                          main.py (click CLI of run.sh)
    rdpp       github.com/tientrandinh/Revisiting-Reverse-Distillation main.py (train), inference.py (test)
    ckaad      github.com/Faustinaqq/CKAAD                            main.py (train); their evaluation() (test)
    isstad     github.com/xjspin/ISSTAD                               step1 MAE + step2 scripts (own venv, timm 0.3.2)

Two phases, each one child process (their code sets global seeds, devices and
module state; a child keeps that out of ours):

``fit``      their training on exactly the given training images (linked into
             the folder layout their code reads, under ``WORK/data``). The test
             folder they also open is empty: no test image is seen in training.
             Their checkpoint stays in WORK.
``predict``  their test pass on exactly the given files (linked as their test
             set, with masks where the layout has them), from the checkpoint of
             ``fit``; writes ``predictions.npz``: ``files`` (as given),
             ``score`` (N,) and ``map`` (N, H, W) float32 as their code computes
             them, + ``predictions.json`` (commit, settings, their own metrics
             on those files where they could be computed, times).

What the child changes, per method (the departures table of README
"Table 1 in full" lists each with its reason):

all      offline: torch.hub / torchvision weight downloads raise; the torchvision
         backbone their code asks for is built from a local state dict
         (``backbone_weights``) or, when asked (``random_backbone``), with seeded
         random weights (tests, timing); their PRO (``np.bool`` / DataFrame.append,
         removed in numpy 2 / pandas 2) is not computed (ours is); their metric
         calls that need both classes return NaN on a one-class file list.
simplenet  ``_evaluate`` during fit is an epoch counter: their best-epoch choice
         by test I-AUROC keeps the last epoch (the test folder is empty anyway);
         the device comes from ``--device`` (their ``--gpu`` has no CPU value).
rdpp     ``/content/<class>`` paths point into WORK/data; the epoch count comes
         from the settings (their table has no coal class); the per-epoch test
         evaluation that picks the saved checkpoint is off: the last epoch is saved.
ckaad    the model their main.py trains (and drops) is saved after training;
         ``--eval_epoch`` > epochs (their per-epoch test evaluation is logging only).
isstad   runs in a venv with timm 0.3.2 (``isstad-env``), with a ``torch._six``
         shim (gone in torch 2), ``os.walk`` sorted (their README requires NTFS,
         whose listings are sorted: their mask pairing depends on it), a no-op
         ``torch.cuda.synchronize`` on the CPU, argparse.Namespace allowed in
         their checkpoints (torch.load weights_only); step 1's checkpoint goes to
         the folder step 2 reads; predict = their step-2 script for one epoch at
         learning rate 0 on one training image (no weight changes: checked)
         started from fit's step-2 weights, then their test pass.

Commands (repository root)::

    python tools/official_harness.py fit --method simplenet --data CATEGORY_DIR --work WORK \\
        [--authors CLONE] [--settings JSON] [--random-backbone | --backbone-weights FILE] [--seed 0] [--device cpu]
    python tools/official_harness.py predict --method simplenet --data CATEGORY_DIR --work WORK [same options]
        [--files LIST.txt]   (default: every test image of CATEGORY_DIR)
    python tools/official_harness.py isstad-env --venv DIR     (python -m venv + timm==0.3.2 --no-deps)

``--settings`` is a JSON object of the method's settings (the keys of
``configs/methods/<name>.yaml``); the adapters of ``usad.models.official``
call :func:`fit` and :func:`predict` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import resource
import runpy
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from authors_harness import authors_commit  # noqa: E402 (tools/: one way to record a clone's commit)

METHODS = ("simplenet", "rdpp", "ckaad", "isstad")
REPOSITORIES = {
    "simplenet": "https://github.com/DonaldRR/SimpleNet",
    "rdpp": "https://github.com/tientrandinh/Revisiting-Reverse-Distillation",
    "ckaad": "https://github.com/Faustinaqq/CKAAD",
    "isstad": "https://github.com/xjspin/ISSTAD",
}
CLONE_FILES = {  # what a clone must hold
    "simplenet": ("main.py", "simplenet.py", "backbones.py", "common.py", "datasets/mvtec.py"),
    "rdpp": ("main.py", "inference.py", "model/resnet.py", "utils/utils_test.py", "dataset/dataset.py"),
    "ckaad": ("main.py", "util/test.py", "model/model.py", "dataset/dataset.py", "dataset/mvtec.py"),
    "isstad": ("step1_mae_pretrain/main_mvtec_ad_step1.py", "step2_pixel_ss_learning/main_mvtec_ad_step2.py",
               "step2_pixel_ss_learning/util/mtvecad.py"),
}
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLONES = REPO_ROOT.parent / "shared" / "authors"
MARKER = ".official_harness"          # a work folder this tool made
TIMM_ISSTAD = "0.3.2"                 # ISSTAD asserts timm.__version__ == "0.3.2"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The class name each code runs under (a folder name). RD++'s main.py needs one of its MVTec classes (their epoch
# table; the epochs come from the settings); ISSTAD's comes from the settings (`object_name`: its augmentation).
CLASS_NAME = {"simplenet": "coal", "rdpp": "bottle", "ckaad": "coal"}


def class_name(method: str, settings: dict) -> str:
    return settings["object_name"] if method == "isstad" else CLASS_NAME[method]


class HarnessError(RuntimeError):
    """Bad arguments, a missing clone / file, or a failed run of their code: one message."""


# --------------------------------------------------------------------------- clones and commits


def default_clone(method: str) -> Path:
    return DEFAULT_CLONES / method


def check_clone(method: str, authors: Path | None) -> Path:
    """Their clone: ``authors`` or ``../shared/authors/<method>``, with the files their run needs."""
    if method not in METHODS:
        raise HarnessError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    path = Path(authors if authors is not None else default_clone(method)).expanduser().resolve()
    missing = [f for f in CLONE_FILES[method] if not (path / f).is_file()]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.is_dir() else f"lacks {missing}"
        raise HarnessError(f"the {method} clone {path} {what}: git clone {REPOSITORIES[method]} {path} "
                           f"(commit: see ../shared/authors/ABOUT.md), or give its path")
    return path


# --------------------------------------------------------------------------- their folder layout


def prepare_work(work: Path) -> Path:
    """WORK: new, empty, or made by this tool."""
    work = Path(work).expanduser().resolve()
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        raise HarnessError(f"work folder {work} is not empty and was not made by this tool: give a new or empty one")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).touch()
    return work


def clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def mask_of(image: Path) -> Path | None:
    """The MVTec / CoalAD mask of a test image: <category>/ground_truth/<kind>/<stem>_mask.png, if it is there."""
    kind_dir = image.parent
    path = kind_dir.parent.parent / "ground_truth" / kind_dir.name / f"{image.stem}_mask.png"
    return path if path.is_file() else None


def link_category(root: Path, train: list[Path], test: list[Path]) -> list[str]:
    """``root`` in the MVTec layout their code reads: ``train/good/<i>.png`` -> each training image;
    ``test/<kind>/<i>.png`` -> each test file (kind ``good`` for normal images, ``k<j>`` for the others),
    ``ground_truth/<kind>/<i>_mask.png`` -> its mask (an all-zero mask where it has none: their loaders pair
    every anomalous image with one; our metrics read the real masks). Returns the test links (relative to
    ``root``) in the order of ``test``. Links are named ``.png`` (their globs): the decoders read the content."""
    from PIL import Image

    clear(root)
    (root / "train" / "good").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "ground_truth").mkdir()
    for i, path in enumerate(train):
        (root / "train" / "good" / f"{i:05d}.png").symlink_to(Path(path).resolve())
    kinds = sorted({Path(p).parent.name for p in test} - {"good"})
    links = []
    for i, path in enumerate(test):
        path = Path(path).resolve()
        kind = "good" if path.parent.name == "good" else f"k{kinds.index(path.parent.name)}"
        (root / "test" / kind).mkdir(exist_ok=True)
        (root / "test" / kind / f"{i:05d}.png").symlink_to(path)
        links.append(f"test/{kind}/{i:05d}.png")
        if kind != "good":
            (root / "ground_truth" / kind).mkdir(exist_ok=True)
            mask, target = mask_of(path), root / "ground_truth" / kind / f"{i:05d}_mask.png"
            if mask is not None:
                target.symlink_to(mask.resolve())
            else:
                with Image.open(path) as im:
                    Image.new("L", im.size, 0).save(target)
    return links


def test_images(data: Path) -> list[Path]:
    """Every image under ``data/test/<kind>/``, sorted."""
    test = Path(data) / "test"
    if not test.is_dir():
        raise HarnessError(f"{data} has no test/ folder (CoalAD / MVTec layout: train/good, test/<kind>)")
    return sorted(p for p in test.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)


def train_images(data: Path) -> list[Path]:
    good = Path(data) / "train" / "good"
    files = sorted(p for p in good.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise HarnessError(f"{good} holds no images (CoalAD / MVTec layout: train/good)")
    return files


# --------------------------------------------------------------------------- settings -> their arguments


def their_argv(method: str, phase: str, s: dict, device: str, seed: int) -> list:
    """Their command-line arguments for ``phase`` from our settings (configs/methods/<method>.yaml keys)."""
    name = class_name(method, s)
    if method == "simplenet":  # run.sh, with the sizes and epochs of the settings
        net = ["net", "-b", s["backbone"], *sum((["-le", layer] for layer in s["layers"]), []),
               "--pretrain_embed_dimension", s["pretrain_embed_dimension"],
               "--target_embed_dimension", s["target_embed_dimension"], "--patchsize", s["patchsize"],
               "--meta_epochs", s["meta_epochs"], "--embedding_size", s["embedding_size"],
               "--gan_epochs", s["gan_epochs"], "--noise_std", s["noise_std"], "--dsc_hidden", s["dsc_hidden"],
               "--dsc_layers", s["dsc_layers"], "--dsc_margin", s["dsc_margin"], "--dsc_lr", s["dsc_lr"],
               "--pre_proj", s["pre_proj"]]
        data = ["dataset", "--batch_size", s["batch_size"], "--num_workers", s["num_workers"],
                "--resize", s["resize"], "--imagesize", s["imagesize"], "-d", name, "mvtec", "data"]
        return ["--seed", seed, "--log_group", "simplenet", "--log_project", "official", "--results_path",
                "results", "--run_name", "run", *net, *data]
    if method == "rdpp":
        if phase == "fit":
            return ["--save_folder", "rdpp", "--classes", name, "--batch_size", s["batch_size"],
                    "--image_size", s["image_size"], "--proj_lr", s["proj_lr"], "--distill_lr", s["distill_lr"],
                    "--weight_proj", s["weight_proj"]]
        return ["--checkpoint_folder", "rdpp", "--classes", name, "--image_size", s["image_size"]]
    if method == "ckaad":  # script/mvtec.sh
        return ["--dataset", "mvtec", "--batch_size", s["batch_size"], "--lr", s["lr"], "--d_lr", s["d_lr"],
                "--adv_conf", s["adv_conf"], "--epochs", s["epochs"], "--normal", name, "--seed", seed,
                "--img_size", s["img_size"], "--labeled_anomaly_class_num", s["labeled_anomaly_class_num"],
                "--labeled_anomaly_class", 0, "--labeled_anomaly_ratio", s["labeled_anomaly_ratio"],
                "--log_dir", "./log", "--model", s["model"], "--eval_epoch", s["epochs"] + 1,
                "--topk", s["topk"], "--layer", *s["layers"]]
    if method == "isstad":
        data = f"./data/mvtecAD/{name}"
        if phase == "step1":
            return ["--object_name", name, "--data_path", f"{data}/train",
                    "--output_dir", f"./saved_models/step1_saved_models/mvtecAD/{name}/",
                    "--epochs", s["step1_epochs"], "--batch_size", s["step1_batch_size"],
                    "--blr", s["step1_blr"], "--warmup_epochs", s["step1_warmup_epochs"],
                    "--mask_ratio", s["mask_ratio"], "--num_workers", s["num_workers"],
                    "--device", "cuda" if device.startswith("cuda") else "cpu", "--seed", seed]
        predicting = phase == "predict"
        return ["--object_name", name, "--train_data_dir", f"{data}/train", "--test_data_dir", f"{data}/test",
                "--test_label_dir", f"{data}/ground_truth",
                "--step1_saved_models_dir", "./saved_models/predict_start/" if predicting else
                "./saved_models/step1_saved_models/mvtecAD/",
                "--saved_models_dir", "./saved_models/step2_predict/" if predicting else
                "./saved_models/step2_saved_models/mvtecAD/",
                "--num_epochs", 1 if predicting else s["step2_epochs"], "--batchsize", s["step2_batch_size"],
                "--lr", 0.0 if predicting else s["step2_lr"], "--min_lr", 0.0 if predicting else s["step2_min_lr"],
                "--T_max", s["step2_t_max"], "--num_workers", s["num_workers"], "--seed", seed,
                "--gpu_id", device.split(":")[1] if device.startswith("cuda:") else "0" if device == "cuda" else ""]
    raise HarnessError(f"unknown method {method!r}")


# --------------------------------------------------------------------------- the parent side


def child_env(device: str, cache: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
               NUMBA_CACHE_DIR=str(cache / "numba"), TORCH_HOME=str(cache / "torch_home_unused"))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:"):  # their code uses the default GPU: make it GPU N
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    env.pop("PYTHONPATH", None)
    return env


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "usad" / "official"


def run_child(python: str, spec: dict, log: Path, device: str) -> dict:
    """One child process: ``python official_harness.py _child SPEC``; its wall and CPU seconds."""
    spec_path = log.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec, indent=2))
    cmd = [python, str(Path(__file__).resolve()), "_child", str(spec_path)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(device, cache_dir()),
                            cwd=spec["work"]).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        lines = log.read_text(errors="replace").splitlines()
        tail = "\n".join(lines[-25:])
        raise HarnessError(f"their {spec['method']} code failed in {spec['phase']} (exit {rc}); log {log}:\n{tail}")
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def backbone_spec(random_backbone: bool, backbone_weights: str | None) -> dict:
    """Where the torchvision backbone's weights come from: a local file, or seeded random weights if asked."""
    if backbone_weights:
        path = Path(backbone_weights).expanduser().resolve()
        if not path.is_file():
            raise HarnessError(f"backbone weights {path} do not exist (a torchvision state dict, e.g. "
                               f"wide_resnet50_2-95faca4d.pth of IMAGENET1K_V1)")
        return {"mode": "file", "file": str(path)}
    if random_backbone:
        return {"mode": "random"}
    raise HarnessError("no backbone weights: give a local torchvision checkpoint (backbone_weights) or ask for "
                       "seeded random weights (random_backbone, tests and timing only)")


def interpreter(method: str, venv: Path | None) -> str:
    if method != "isstad":
        return sys.executable
    return str(check_isstad_env(venv))


def base_spec(method, phase, clone, work, settings, seed, device, backbone) -> dict:
    return {"method": method, "phase": phase, "authors": str(clone), "work": str(work), "settings": settings,
            "seed": int(seed), "device": device, "backbone": backbone, "class_name": class_name(method, settings)}


def fit(method: str, train: list[Path], work: Path, settings: dict, *, authors: Path | None = None,
        seed: int = 0, device: str = "cpu", backbone: dict | None = None, venv: Path | None = None) -> dict:
    """Their training on ``train`` (normal images only) in ``work``; returns the run's record (also in
    WORK/fit.json): commit, settings, wall and CPU seconds, their checkpoint and its SHA-256."""
    clone = check_clone(method, authors)
    if not train:
        raise HarnessError("fit needs at least one training image")
    python = interpreter(method, venv)
    work = prepare_work(work)
    for sub in ("data", "logs", "fit.json", "predictions", "results", "rdpp", "log", "saved_models", "result",
                "ckaad_model.pth", "step1_mae_pretrain", "step2_pixel_ss_learning"):
        clear(work / sub)
    (work / "logs").mkdir()
    # CKAAD's test loader cannot be empty (np.stack of no images): one training image stands in, never evaluated
    link_category(data_root(method, work, settings), train, train[:1] if method == "ckaad" else [])
    spec = base_spec(method, "fit", clone, work, settings, seed, device, backbone or {"mode": "none"})
    times = {}
    if method == "isstad":
        times["step1"] = run_child(python, {**spec, "phase": "step1"}, work / "logs" / "step1.log", device)
    times["fit"] = run_child(python, spec, work / "logs" / "fit.log", device)
    ckpt = checkpoint_path(method, work, settings)
    if not ckpt.is_file():
        raise HarnessError(f"their {method} training wrote no checkpoint at {ckpt}; log {work / 'logs'}")
    record = {"method": method, "authors": str(clone), "authors_commit": authors_commit(clone), "settings": settings,
              "seed": seed, "device": device, "backbone": spec["backbone"], "n_train": len(train),
              "checkpoint": str(ckpt.relative_to(work)), "checkpoint_sha256": sha256(ckpt),
              "wall_s": sum(t["wall_s"] for t in times.values()), "cpu_s": sum(t["cpu_s"] for t in times.values()),
              "phases": times}
    (work / "fit.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def predict(method: str, files: list[Path], work: Path, settings: dict, *, authors: Path | None = None,
            seed: int = 0, device: str = "cpu", backbone: dict | None = None, venv: Path | None = None,
            out: Path | None = None) -> dict:
    """Their test pass over exactly ``files`` from the checkpoint ``fit`` left in ``work``: a dict with
    ``score`` (N,), ``map`` (N, H, W) float32 in the order of ``files``, and ``meta``."""
    import numpy as np

    clone = check_clone(method, authors)
    work = Path(work).expanduser().resolve()
    fitted = work / "fit.json"
    if not fitted.is_file():
        raise HarnessError(f"{work} holds no fitted {method} (fit.json missing): run fit first")
    record = json.loads(fitted.read_text())
    ckpt = work / record["checkpoint"]
    if not ckpt.is_file() or sha256(ckpt) != record["checkpoint_sha256"]:
        raise HarnessError(f"their checkpoint {ckpt} is missing or changed since fit: fit again")
    if not files:
        raise HarnessError("predict needs at least one file")
    python = interpreter(method, venv)
    (work / "predictions").mkdir(exist_ok=True)
    for sub in ("record.npz", "record.json"):
        clear(work / "predictions" / sub)
    root = data_root(method, work, settings)
    train_links = sorted((root / "train" / "good").iterdir())
    first_train = [t.resolve() for t in train_links[:1]]  # their resume / lr-0 paths open one training image
    links = link_category(root, first_train, [Path(f) for f in files])
    spec = base_spec(method, "predict", clone, work, settings, seed, device, backbone or record["backbone"])
    spec["record"] = str(work / "predictions" / "record.npz")
    times = run_child(python, spec, work / "logs" / "predict.log", device)
    rec = np.load(spec["record"])
    meta = json.loads((work / "predictions" / "record.json").read_text())
    order = {rel: i for i, rel in enumerate(meta["links"])}
    missing = [rel for rel in links if rel not in order]
    if missing:
        raise HarnessError(f"their {method} test pass did not score {len(missing)} of the files (e.g. {missing[0]})")
    idx = np.array([order[rel] for rel in links])
    scores = rec["score"].astype(np.float32)[idx]
    maps = rec["map"].astype(np.float32)[idx]
    if method == "simplenet":
        maps = uncrop(maps, [Path(f) for f in files], settings["resize"], settings["imagesize"])
    result = {"score": scores, "map": maps,
              "meta": {"method": method, "authors_commit": authors_commit(clone), "settings": settings,
                       "seed": seed, "device": device, "their_metrics": meta.get("their_metrics", {}),
                       "wall_s": times["wall_s"], "cpu_s": times["cpu_s"], "fit": record,
                       "map_size": list(maps.shape[1:])}}
    if out is not None:
        write_predictions(out, [str(f) for f in files], result)
    return result


def data_root(method: str, work: Path, settings: dict) -> Path:
    """The category folder their code reads, under WORK."""
    name = class_name(method, settings)
    return {"simplenet": work / "data" / name, "rdpp": work / "data" / name, "ckaad": work / "data" / "mvtec" / name,
            "isstad": work / "data" / "mvtecAD" / name}[method]


def checkpoint_path(method: str, work: Path, settings: dict) -> Path:
    name = class_name(method, settings)
    return {"simplenet": work / "results" / "official" / "simplenet" / "run" / "models" / "0" / f"mvtec_{name}"
            / "ckpt.pth",
            "rdpp": work / "rdpp" / name / f"wres50_{name}.pth",
            "ckaad": work / "ckaad_model.pth",
            "isstad": work / "saved_models" / "step2_saved_models" / "mvtecAD" / name / "net_ad.pth"}[method]


def uncrop(maps, files: list[Path], resize: int, imagesize: int):
    """SimpleNet scores the centre ``imagesize`` crop of the image resized to ``resize`` (shorter side):
    put each map back into that resized frame, the cropped-away border at the map's minimum (scored normal)."""
    import numpy as np
    from PIL import Image

    if resize == imagesize and all(_is_square(f) for f in files):
        return maps
    out = []
    for m, f in zip(maps, files):
        with Image.open(f) as im:
            w, h = im.size
        short, long = min(w, h), max(w, h)
        rl = int(resize * long / short)  # torchvision Resize(int): the longer side truncated
        rh, rw = (resize, rl) if h <= w else (rl, resize)
        top, left = int(round((rh - imagesize) / 2.0)), int(round((rw - imagesize) / 2.0))
        frame = np.full((rh, rw), m.min(), np.float32)
        frame[top:top + imagesize, left:left + imagesize] = m
        out.append(frame)
    if len({f.shape for f in out}) > 1:
        raise HarnessError("SimpleNet maps of images of different aspect ratios cannot be stacked: give files of "
                           "one size")
    return np.stack(out)


def _is_square(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0] == im.size[1]


def write_predictions(out: Path, files: list[str], result: dict) -> None:
    import numpy as np

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, files=np.array(files, dtype=str), score=result["score"], map=result["map"])
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(result["meta"], indent=2, default=str) + "\n")


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- ISSTAD's environment


def default_venv() -> Path:
    return cache_dir() / "isstad-venv"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_timm(venv: Path) -> str | None:
    python = venv_python(venv)
    if not python.is_file():
        return None
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('timm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def check_isstad_env(venv: Path | None) -> Path:
    venv = Path(venv or default_venv()).expanduser()
    version = venv_timm(venv)
    if version != TIMM_ISSTAD:
        found = "missing" if version is None else f"has timm {version}"
        raise HarnessError(f"ISSTAD's environment {venv} is {found}: ISSTAD asserts timm {TIMM_ISSTAD}; make it "
                           f"with: python tools/official_harness.py isstad-env --venv {venv}")
    return venv_python(venv)


def make_isstad_env(venv: Path | None = None) -> Path:
    """A venv seeing this interpreter's packages (torch, ...) with timm 0.3.2 of its own (no dependencies)."""
    venv = Path(venv or default_venv()).expanduser()
    if venv_timm(venv) == TIMM_ISSTAD:
        return venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
             [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--no-deps", f"timm=={TIMM_ISSTAD}"]]
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise HarnessError(f"making ISSTAD's environment failed: {' '.join(cmd)}:\n{out.stderr[-2000:]}")
    return check_isstad_env(venv)


# =========================================================================== inside the child process
# Everything below runs in the child, around their code (imported from the clone, never copied).


@contextlib.contextmanager
def seeded(seed: int):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def torchvision_state(arch: str, backbone: dict, seed: int) -> dict:
    """The state dict standing in for torchvision's pretrained ``arch``: the local file, or seeded random weights."""
    import torch
    import torchvision

    if backbone["mode"] == "file":
        state = torch.load(backbone["file"], map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        return state
    if backbone["mode"] == "random":
        print(f"[official_harness] WARNING: {arch} gets seeded RANDOM weights (seed {seed}): tests / timing only",
              flush=True)
        with seeded(seed):
            return torchvision.models.get_model(arch, weights=None).state_dict()
    raise HarnessError(f"their code asked for pretrained {arch}: give backbone weights or random_backbone")


UNUSED_LAYERS = ("layer4.", "fc.")  # no method here reads them (SimpleNet layer2-3, CKAAD / RD++ layer1-3)


def load_backbone(model, state: dict, arch: str) -> None:
    """``state`` into ``model``; a file may leave out layer4 / fc (e.g. tests/golden's tiny ResNet-18), which
    then stay seeded random: their outputs never reach a score."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    used = [k for k in missing if not k.startswith(UNUSED_LAYERS)]
    if used or unexpected:
        raise HarnessError(f"the backbone weights are not a torchvision {arch} state dict (missing {used[:3]}, "
                           f"unexpected {unexpected[:3]})")
    if missing:
        print(f"[official_harness] {arch}: the weights file has no {sorted({k.split('.')[0] for k in missing})} "
              f"(unused here): seeded random", flush=True)


def install_offline(backbone: dict, seed: int, archs=("resnet18", "resnet50", "wide_resnet50_2")) -> None:
    """Network downloads raise; torchvision's builders of ``archs`` load ``torchvision_state`` instead."""
    import torch
    import torchvision

    def no_download(url, *args, **kwargs):
        raise HarnessError(f"offline: their code tried to download {url}")

    torch.hub.load_state_dict_from_url = no_download
    torch.hub.download_url_to_file = no_download
    torchvision.models._api.WeightsEnum.get_state_dict = lambda self, *a, **k: no_download(self.url)

    for arch in archs:
        def build(*args, _arch=arch, **kwargs):
            pretrained, weights = kwargs.pop("pretrained", False), kwargs.pop("weights", None)
            wants = bool(pretrained or weights is not None or (args and args[0]))
            kwargs.pop("progress", None)
            with seeded(seed):
                model = torchvision.models.get_model(_arch, weights=None, **kwargs)
            if wants:
                load_backbone(model, torchvision_state(_arch, backbone, seed), _arch)
            return model

        setattr(torchvision.models, arch, build)


def tolerant(fn, record: list | None = None, fallback=float("nan")):
    """fn(*args) recorded (copies of its array arguments); ``fallback`` (NaN) where it needs two classes and
    gets one."""
    import numpy as np

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if record is not None:
            record.append([np.asarray(a).copy() if isinstance(a, (list, np.ndarray)) else a for a in args])
        try:
            return fn(*args, **kwargs)
        except ValueError as e:  # sklearn: "Only one class present in y_true", or an empty list
            print(f"[official_harness] {fn.__name__}: {e} -> NaN", flush=True)
            return fallback

    return wrapper


def no_pro(*args, **kwargs):
    """Their PRO uses np.bool / DataFrame.append (removed in numpy 2 / pandas 2): not computed (ours is)."""
    return float("nan")


def run_script(path: Path, argv: list) -> None:
    sys.argv = [str(path)] + [str(a) for a in argv]
    runpy.run_path(str(path), run_name="__main__")


def save_record(spec: dict, links: list[str], score, maps, their_metrics: dict) -> None:
    import numpy as np

    np.savez(spec["record"], score=np.asarray(score, np.float32), map=np.asarray(maps, np.float32))
    Path(spec["record"]).with_suffix(".json").write_text(json.dumps(
        {"links": links, "their_metrics": their_metrics}, indent=2, default=float))


def rel_link(spec: dict, path) -> str:
    """A test image path of their loader -> its link relative to the category folder (test/<kind>/<i>.png)."""
    p = Path(path)
    return f"test/{p.parent.name}/{p.name}"


# --------------------------------------------------------------------------- SimpleNet


def child_simplenet(spec: dict) -> None:
    import numpy as np
    import torch

    s, phase = spec["settings"], spec["phase"]
    install_offline(spec["backbone"], spec["seed"])
    import metrics as their_metrics
    import simplenet
    import utils as their_utils

    wanted = spec["device"]  # cuda:N is GPU 0 of the child (CUDA_VISIBLE_DEVICES=N)
    device = torch.device("cuda" if wanted.startswith("cuda") or (wanted == "auto" and torch.cuda.is_available())
                          else "cpu")
    their_utils.set_torch_device = lambda gpu_ids: device
    their_metrics.compute_pro = no_pro
    for name in ("compute_imagewise_retrieval_metrics", "compute_pixelwise_retrieval_metrics"):
        setattr(their_metrics, name, tolerant(getattr(their_metrics, name), fallback={"auroc": float("nan")}))
    out = {}
    if phase == "fit":
        epochs = iter(range(1, 1 << 30))

        def last_epoch_wins(self, *args, **kwargs):  # their best-epoch choice by test I-AUROC: keep the last
            k = next(epochs)
            return k, k, k

        simplenet.SimpleNet._evaluate = last_epoch_wins
    else:
        real_predict = simplenet.SimpleNet._predict_dataloader
        real_evaluate = simplenet.SimpleNet._evaluate

        def record_predict(self, dataloader, prefix):
            result = real_predict(self, dataloader, prefix)
            if prefix == "":  # the test set (the training set passes with prefix "train_")
                out["paths"] = [x[2] for x in dataloader.dataset.data_to_iterate]
                out["scores"] = [float(np.asarray(v).squeeze()) for v in result[0]]
                out["maps"] = [np.asarray(m, np.float32) for m in result[1]]
            return result

        def record_evaluate(self, *args, **kwargs):
            try:
                auroc, pixel_auroc, pro = real_evaluate(self, *args, **kwargs)
            except ValueError as e:
                print(f"[official_harness] their _evaluate: {e}", flush=True)
                auroc = pixel_auroc = pro = float("nan")
            out["their_metrics"] = {"image_auroc": auroc, "pixel_auroc": pixel_auroc}
            return auroc, pixel_auroc, pro

        simplenet.SimpleNet._predict_dataloader = record_predict
        simplenet.SimpleNet._evaluate = record_evaluate
    main = Path(spec["authors"]) / "main.py"
    try:
        run_script(main, their_argv("simplenet", phase, s, spec["device"], spec["seed"]))
    except SystemExit as e:  # click ends with sys.exit(0)
        if e.code not in (0, None):
            raise
    if phase == "predict":
        links = [rel_link(spec, p) for p in out["paths"]]
        save_record(spec, links, out["scores"], np.stack(out["maps"]), out.get("their_metrics", {}))


# --------------------------------------------------------------------------- RD++


def child_rdpp(spec: dict) -> None:
    import numpy as np
    import torch
    import tqdm as tqdm_module

    s, phase, work = spec["settings"], spec["phase"], Path(spec["work"])
    install_offline(spec["backbone"], spec["seed"])
    import dataset.dataset as their_dataset
    import model.resnet as their_resnet
    import utils.utils_test as their_test

    # their encoder: model.resnet's own wide_resnet50_2, whose pretrained weights come from load_state_dict_from_url
    their_resnet.load_state_dict_from_url = lambda url, *a, **k: torchvision_state(
        "wide_resnet50_2", spec["backbone"], spec["seed"])
    if s.get("tiny_networks"):
        install_tiny_rdpp(spec["seed"])
    content = "/content/"

    def redirect(cls):  # their hard-coded /content/<class> -> WORK/data/<class>
        real = cls.__init__

        def init(self, root, *args, **kwargs):
            if str(root).startswith(content):
                root = str(work / "data" / str(root)[len(content):])
            real(self, root, *args, **kwargs)
            if hasattr(self, "gt_paths"):
                out["paths"] = list(self.img_paths)

        cls.__init__ = init

    if not torch.cuda.is_available():  # their loss has a hard-coded .to('cuda'): the CPU stands in for it
        real_to = torch.Tensor.to

        def to(self, *args, **kwargs):
            args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
            return real_to(self, *args, **kwargs)

        torch.Tensor.to = to
    out: dict = {}
    redirect(their_dataset.MVTecDataset_train)
    redirect(their_dataset.MVTecDataset_test)
    their_test.compute_pro = no_pro
    if phase == "fit":
        epochs = int(s["epochs"])
        real_tqdm = tqdm_module.tqdm

        def epoch_loop(iterable=None, *args, **kwargs):  # their per-class epoch table has no coal class
            if isinstance(iterable, range) and iterable.start == 1:
                iterable = range(1, epochs + 1)
            return real_tqdm(iterable, *args, **kwargs)

        tqdm_module.tqdm = epoch_loop
        done = iter(range(1, 1 << 30))

        def no_test_evaluation(*args, **kwargs):  # their checkpoint choice on test metrics: save the last epoch
            last = next(done) == epochs
            return (1.0, 1.0, 1.0) if last else (0.0, 0.0, 0.0)

        their_test.evaluation_multi_proj = no_test_evaluation
        run_script(Path(spec["authors"]) / "main.py", their_argv("rdpp", "fit", s, spec["device"], spec["seed"]))
        return
    calls: list = []
    maps: list = []
    real_gaussian = their_test.gaussian_filter

    def record_map(a, *args, **kwargs):
        m = real_gaussian(a, *args, **kwargs)
        maps.append(np.asarray(m, np.float32))
        return m

    their_test.gaussian_filter = record_map
    their_test.roc_auc_score = tolerant(their_test.roc_auc_score, calls)
    run_script(Path(spec["authors"]) / "inference.py", their_argv("rdpp", "predict", s, spec["device"], spec["seed"]))
    # their evaluation: roc_auc_score(pixels) then roc_auc_score(gt_list_sp, pr_list_sp = max of each map)
    scores = calls[1][1]
    links = [rel_link(spec, p) for p in out["paths"]]
    metrics = {"image_auroc": _their_auc(calls[1]), "pixel_auroc": _their_auc(calls[0])}
    save_record(spec, links, scores, np.stack(maps), metrics)


TINY_RDPP = {"blocks": [1, 1, 1, 1], "width_per_group": 16}  # their classes, 1 block a stage, narrow (tests)


def install_tiny_rdpp(seed: int) -> None:
    """Their encoder / one-class bottleneck / decoder classes at one block a stage and width 16, seeded random
    (the channel counts their projection layers expect stay: Bottleneck expansion 4)."""
    import model.de_resnet as their_de
    import model.resnet as their_resnet

    blocks, width = TINY_RDPP["blocks"], TINY_RDPP["width_per_group"]
    print(f"[official_harness] WARNING: tiny RD++ networks ({TINY_RDPP}), seeded random (tests / timing)", flush=True)

    def encoder(pretrained=False, progress=True, **kwargs):
        with seeded(seed):
            net = their_resnet.ResNet(their_resnet.Bottleneck, blocks, width_per_group=width)
            return net, their_resnet.BN_layer(their_resnet.AttnBottleneck, 1, width_per_group=width)

    def decoder(pretrained=False, progress=True, **kwargs):
        with seeded(seed + 1):
            return their_de.ResNet(their_de.Bottleneck, blocks[:3], width_per_group=width)

    their_resnet.wide_resnet50_2 = encoder
    their_de.de_wide_resnet50_2 = decoder


def _their_auc(call) -> float:
    from sklearn.metrics import roc_auc_score

    try:
        return float(roc_auc_score(call[0], call[1]))
    except ValueError:
        return float("nan")


# --------------------------------------------------------------------------- CKAAD


def child_ckaad(spec: dict) -> None:
    import numpy as np
    import torch

    s, phase, work = spec["settings"], spec["phase"], Path(spec["work"])
    install_offline(spec["backbone"], spec["seed"])
    import model.model as their_model
    import util.test as their_test

    their_test.compute_pro = no_pro
    built: dict = {}
    real_init = their_model.ED.__init__

    def keep(self, *args, **kwargs):  # their main.py trains this model and drops it: keep it to save it
        real_init(self, *args, **kwargs)
        built["ed"] = self

    their_model.ED.__init__ = keep
    argv = their_argv("ckaad", phase, s, spec["device"], spec["seed"])
    if phase == "fit":
        run_script(Path(spec["authors"]) / "main.py", argv)
        torch.save(built["ed"].state_dict(), work / "ckaad_model.pth")
        return
    # their test pass: main.py's model and data set-up with load_test_only=True, then their evaluation()
    sys.argv = ["main.py"] + [str(a) for a in argv]
    import main as their_main
    from dataset.dataset import OODDataSet

    args = their_main.parse_args()
    args.seed = their_main.setup_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = OODDataSet(root="./data", dataset=args.dataset, image_size=args.img_size, category=args.normal,
                      labeled_anomaly_ratio=args.labeled_anomaly_ratio,
                      labeled_anomaly_class_num=args.labeled_anomaly_class_num,
                      labeled_anomaly_class=args.labeled_anomaly_class, load_test_only=True)
    loader = data.get_data_loader(batch_size=args.batch_size)
    pfe = their_model.PretrainedFeatureExtractor(args.model, layers=args.layer, image_size=args.img_size).to(device)
    pfe.eval()
    ed = their_model.ED(backbone=args.model, input_channels=pfe.output_channels).to(device)
    ed.load_state_dict(torch.load(work / "ckaad_model.pth", map_location=device, weights_only=True))
    calls: list = []
    maps: list = []
    real_map = their_test.cal_anomaly_map

    def record_map(*a, **k):
        m = real_map(*a, **k)
        maps.extend(np.asarray(m, np.float32))
        return m

    their_test.cal_anomaly_map = record_map
    real_metrics = their_test.calculate_metrics

    def record_metrics(scores, labels, acc=True):
        calls.append((np.asarray(scores).copy(), np.asarray(labels).copy()))
        try:
            return real_metrics(scores, labels, acc)
        except (ValueError, IndexError) as e:
            print(f"[official_harness] their calculate_metrics: {e} -> NaN", flush=True)
            return {"AUROC": float("nan")}

    their_test.calculate_metrics = record_metrics
    metrics = their_test.evaluation(pfe, ed, loader, device, args)
    scores = calls[1][0]  # evaluation_pixel: calculate_metrics(pixels), then (top-k mean of each map)
    links = [rel_link(spec, p) for p in data.test_dataset.img_paths]
    save_record(spec, links, scores, np.stack(maps),
                {"image_auroc": metrics["Image"]["AUROC"], "pixel_auroc": metrics["Pixel"]["AUROC"]})


# --------------------------------------------------------------------------- ISSTAD


TINY_MAE = {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_embed_dim": 32,
            "decoder_depth": 1, "decoder_num_heads": 2, "mlp_ratio": 4}


def install_isstad_shims(device: str) -> None:
    """torch._six (gone in torch 2; timm 0.3.2 and their util.misc import it), sorted os.walk (NTFS order,
    their README), a no-op torch.cuda.synchronize without CUDA, argparse.Namespace allowed in torch.load."""
    import argparse as _argparse
    import collections.abc

    import torch

    six = types.ModuleType("torch._six")
    six.container_abcs, six.string_classes, six.int_classes, six.inf = collections.abc, (str, bytes), int, math.inf
    sys.modules["torch._six"] = six
    torch._six = six
    real_walk = os.walk

    def sorted_walk(top, *args, **kwargs):
        for root, dirs, files in real_walk(top, *args, **kwargs):
            dirs.sort()
            files.sort()
            yield root, dirs, files

    os.walk = sorted_walk
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
    torch.serialization.add_safe_globals([_argparse.Namespace])


def tiny_mae_builder(module):
    from functools import partial

    import torch.nn as nn

    def build(**kwargs):
        return module.MaskedAutoencoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6), **TINY_MAE, **kwargs)

    return build


def child_isstad(spec: dict) -> None:
    import numpy as np
    import torch

    s, phase, work = spec["settings"], spec["phase"], Path(spec["work"])
    install_isstad_shims(spec["device"])
    tiny = spec["backbone"]["mode"] == "random"
    if phase == "step1":
        step = Path(spec["authors"]) / "step1_mae_pretrain"
        sys.path.insert(0, str(step))
        from model import models_mae

        argv = their_argv("isstad", "step1", s, spec["device"], spec["seed"])
        if tiny:
            build = tiny_mae_builder(models_mae)
            models_mae.mae_vit_large_patch16 = build
            with seeded(spec["seed"]):
                start = {"model": build().state_dict()}
            finetune = work / "saved_models" / "mae_tiny_seeded.pth"
            finetune.parent.mkdir(parents=True, exist_ok=True)
            torch.save(start, finetune)
            print("[official_harness] WARNING: tiny seeded RANDOM MAE in place of mae_visualize_vit_large", flush=True)
        elif spec["backbone"]["mode"] == "file":
            finetune = Path(spec["backbone"]["file"])
        else:
            raise HarnessError("ISSTAD needs the MAE checkpoint mae_visualize_vit_large.pth (mae_weights)")
        run_script(step / "main_mvtec_ad_step1.py", argv + ["--finetune", finetune])
        return
    step = Path(spec["authors"]) / "step2_pixel_ss_learning"
    sys.path.insert(0, str(step))
    from model import models
    import sklearn.metrics
    import util.mtvecad as their_data

    if tiny:
        models.mae_vit_large_patch16 = tiny_mae_builder(models)
    calls: list = []
    sklearn.metrics.roc_auc_score = tolerant(sklearn.metrics.roc_auc_score, calls)
    seen: dict = {}
    real_test = their_data.AD_TEST.__init__

    def keep_test(self, *args, **kwargs):
        real_test(self, *args, **kwargs)
        seen["paths"] = list(self.img_filenames)

    their_data.AD_TEST.__init__ = keep_test
    name = spec["class_name"]
    if phase == "predict":  # start step 2 from fit's step-2 weights, in the format their script loads
        fitted = work / "saved_models" / "step2_saved_models" / "mvtecAD" / name / "net_ad.pth"
        start = work / "saved_models" / "predict_start" / name / "checkpoint-0.75.pth"
        start.parent.mkdir(parents=True, exist_ok=True)
        state = torch.load(fitted, map_location="cpu", weights_only=True)
        torch.save({"model": state}, start)
    run_script(step / "main_mvtec_ad_step2.py", their_argv("isstad", phase, s, spec["device"], spec["seed"]))
    if phase == "fit":
        return
    after_file = work / "saved_models" / "step2_predict" / name / "net_ad.pth"
    after = torch.load(after_file, map_location="cpu", weights_only=True)
    changed = [k for k in state if not torch.equal(state[k], after[k])]
    if changed:
        raise HarnessError(f"ISSTAD predict changed weights ({changed[:3]}): the lr-0 epoch is not a no-op")
    paths = seen["paths"]
    image_call = next(c for c in calls if len(c[0]) == len(paths))  # (pn_mean_list, mean_list) of the epoch
    pixel_call = next((c for c in calls if len(c[0]) != len(paths)), None)
    maps = []
    for p in paths:  # their mixmap, saved as .tif beside ./result/admap/...
        tif = Path(p.replace(".png", ".tif").replace("./data/", "./result/admap/"))
        from PIL import Image

        with Image.open(tif) as im:
            maps.append(np.asarray(im, np.float32))
    links = [rel_link(spec, p) for p in paths]
    metrics = {"image_auroc": _their_auc(image_call)}
    if pixel_call is not None:
        metrics["pixel_auroc"] = _their_auc(pixel_call)
    save_record(spec, links, image_call[1], np.stack(maps), metrics)


CHILDREN = {"simplenet": child_simplenet, "rdpp": child_rdpp, "ckaad": child_ckaad, "isstad": child_isstad}


def child_main(spec_path: Path) -> None:
    spec = json.loads(Path(spec_path).read_text())
    os.chdir(spec["work"])
    if spec["method"] != "isstad":
        sys.path.insert(0, spec["authors"])
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    import random

    import numpy as np
    import torch

    random.seed(spec["seed"])
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    CHILDREN[spec["method"]](spec)


# --------------------------------------------------------------------------- CLI


def load_settings(method: str, text: str | None) -> dict:
    """Their settings: configs/methods/<method>.yaml, updated with the JSON given."""
    import yaml

    path = REPO_ROOT / "configs" / "methods" / f"{method}.yaml"
    settings = yaml.safe_load(path.read_text()) if path.is_file() else {}
    if text:
        given = json.loads(Path(text).read_text() if Path(text).is_file() else text)
        settings.update(given)
    return settings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/official_harness.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{fit,predict,isstad-env}")
    for name in ("fit", "predict"):
        q = sub.add_parser(name)
        q.add_argument("--method", required=True, choices=METHODS)
        q.add_argument("--data", required=True, type=Path, help="CoalAD / MVTec-layout category folder")
        q.add_argument("--work", required=True, type=Path, help="their working folder (new, empty or made here)")
        q.add_argument("--authors", type=Path, help="their clone (default ../shared/authors/<method>)")
        q.add_argument("--settings", help="JSON object or file: settings over configs/methods/<method>.yaml")
        q.add_argument("--backbone-weights", help="local torchvision state dict (ISSTAD: the MAE checkpoint)")
        q.add_argument("--random-backbone", action="store_true", help="seeded random backbone (tests, timing)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
        q.add_argument("--venv", type=Path, help="ISSTAD's venv (default ~/.cache/usad/official/isstad-venv)")
        if name == "predict":
            q.add_argument("--files", type=Path, help="a text file of image paths (default: the test images)")
            q.add_argument("--out", type=Path, help="predictions.npz (default WORK/predictions/predictions.npz)")
    e = sub.add_parser("isstad-env")
    e.add_argument("--venv", type=Path)
    c = sub.add_parser("_child")
    c.add_argument("spec", type=Path)
    a = p.parse_args(argv)
    try:
        if a.command == "_child":
            child_main(a.spec)
        elif a.command == "isstad-env":
            print(make_isstad_env(a.venv))
        else:
            settings = load_settings(a.method, a.settings)
            backbone = backbone_spec(a.random_backbone, a.backbone_weights)
            kw = dict(authors=a.authors, seed=a.seed, device=a.device, backbone=backbone, venv=a.venv)
            if a.command == "fit":
                print(json.dumps(fit(a.method, train_images(a.data), a.work, settings, **kw), indent=2))
            else:
                files = ([Path(x) for x in a.files.read_text().split("\n") if x.strip()] if a.files
                         else test_images(a.data))
                out = a.out or Path(a.work) / "predictions" / "predictions.npz"
                result = predict(a.method, files, a.work, settings, out=out, **kw)
                print(json.dumps({k: v for k, v in result["meta"].items() if k != "fit"}, indent=2, default=str))
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
