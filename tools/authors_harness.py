"""Run the authors' USAD code offline: their outputs for a reference fixture, and their wall time.

The authors' code is never copied into this project: this tool imports and
runs it from a clone the user made (``git clone https://github.com/xjpp2016/USAD``),
given with ``--authors DIR``. Their four scripts run unmodified, each with

- its model builders patched (``timm.create_model`` and ``torch.hub.load``)
  to seeded models that need no network (``--backbones``):
    ``golden``  tiny checkpoints from a weights folder (``--weights``, the
                layout of tests/golden/weights: ``maclu_vit_tiny.pth``,
                ``ma2patch_vit_tiny.pth``, ``patchcore_resnet18.pth``), loaded
                the way a pretrained file loads (timm resamples the 37 x 37
                position embedding to the size the authors ask for);
    ``tiny``    seeded tiny random models of those shapes (written by
                ``tiny_weights`` into the work folder, then as ``golden``);
    ``full``    full-size seeded random ViT-S/14, ViT-B/14 (DINOv2) and
                wide_resnet50_2 (timing: the real compute of a user's run);
- a stub ``wget`` module (their data code imports it for the download only);
- their working folder ``--work DIR`` holding ``data/coal_ad``, a link to the
  CoalAD-layout folder given with ``--data`` (train/good, test/<kind>,
  ground_truth/<kind>).

Their training scripts build the ViTs at timm's default size (336 / 224)
while feeding 350 / 406 px images (usad-reference.md, "Departure": this
project builds them at the branch size). ``--vit-train-size`` picks:
    ``authors`` (default) their scripts exactly as they are;
    ``branch``  the same scripts, with the detector each training script makes
                built at the size of the images that script feeds it (its
                ``VIT_SIZE``) instead of the class default: the project's one
                deliberate ViT departure, applied to their code through the
                builder call, so that a reference isolates implementation
                fidelity (../shared/golden was made this way).

Their code picks CUDA whenever torch sees a GPU: ``--device cpu`` hides the
GPU from their processes (CUDA_VISIBLE_DEVICES=""), ``--device cuda`` requires
one, ``--device auto`` (default) leaves it as it is.

Commands (run from the repository root)::

    # their outputs on a fixture: reference.npz in the format of ../shared/golden/README.md
    # (+ reference.json: commit, backbones, device, PRO-AUC source); tools/make_golden.py uses this
    python tools/authors_harness.py extract --authors DIR --data CATEGORY_DIR \\
        --backbones golden --weights WEIGHTS_DIR --work WORK --out reference.npz \\
        [--vit-train-size branch] [--one-process]

    # their wall time as a user runs them: each script its own process, start-up included
    python tools/authors_harness.py time --authors DIR --data CATEGORY_DIR \\
        --backbones full --device cpu|cuda|auto --work WORK --out times.json [--inprocess]

``time`` writes (stable; benchmarks/run.py and benchmarks/gpu.sh read it)::

    {"scripts": {"train_ma_clu.py": s, "train_ma2patch.py": s, "train_pc.py": s, "test_fusion.py": s},
     "train_s": sum of the three trainings, "eval_s": test_fusion.py,
     "device": "cpu" or "cuda: <GPU name>", "backbones": ..., "vit_train_size": ...,
     "authors_commit": sha or "unknown", "data": CATEGORY_DIR,
     "inprocess": {"scripts": {...}, "train_s": ..., "eval_s": ...} (with --inprocess)}

``--inprocess`` also runs the four scripts one after the other inside a single
process and times each there (no interpreter start-up; the imports are paid by
the first script only). ``extract --one-process`` runs them that way too: the
outputs are the same (each script seeds everything itself; checked equal).

Between the trainings and test_fusion.py the trained models are copied from
``trained_models/`` to ``saved_models/``, as their README tells a user to do
(not timed). ``--work`` must be empty, new, or a folder this tool made (it
clears only its own entries there: data, trained_models, saved_models, result,
_harness, inprocess). Their logs go to ``WORK/_harness/<script>.log`` (the
``--inprocess`` run works in ``WORK/inprocess``).

``extract`` also forces ``cal_pro=True`` in their fusion evaluation, so that
the PRO-AUC comes from their own ``compute_pro`` (which needs pandas and
scikit-image; without them it is computed by ``usad.core.metrics.pro_auc_usad``
and the sidecar JSON says so).

The commit of their code comes from ``git rev-parse HEAD`` of the clone, else
from a line "at commit <sha>" of its ABOUT.md, else "unknown".
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

SCRIPTS = ("train_ma_clu.py", "train_ma2patch.py", "train_pc.py", "test_fusion.py")
TRAIN_SCRIPTS = SCRIPTS[:3]
CATEGORY = "coal_ad"          # their only class name: data/coal_ad under their working folder
MARKER = ".authors_harness"   # a work folder this tool made

# The tiny checkpoints (shapes of ../shared/golden and tests/golden).
VIT_S = "vit_small_patch14_dinov2.lvd142m"
VIT_B = "vit_base_patch14_dinov2.lvd142m"
TINY_VITS = {
    VIT_S: ("maclu_vit_tiny.pth", {"depth": 2, "embed_dim": 16, "num_heads": 2, "init_values": 1.0}),
    VIT_B: ("ma2patch_vit_tiny.pth", {"depth": 2, "embed_dim": 24, "num_heads": 2, "init_values": 1.0}),
}
TINY_RESNET = ("resnet18", "patchcore_resnet18.pth")
RESNET_UNUSED = ("layer4.", "fc.")  # PatchCore taps layer2 and layer3 only
BACKBONES = ("golden", "tiny", "full")
VIT_TRAIN_SIZES = ("authors", "branch")


class HarnessError(RuntimeError):
    """Bad arguments or a failed run of the authors' code: one message."""


# --------------------------------------------------------------------------- their clone and working folder


def authors_commit(authors: Path) -> str:
    """The commit of a clone of other authors' code: git HEAD; else "at commit <sha>" in its own ABOUT.md (a
    snapshot, as ../shared/usad-authors); else the row naming its folder (`` `<name>/` ``) in the ABOUT.md beside
    it (../shared/authors/ABOUT.md); else "unknown". Every tool that runs other authors' code records it."""
    authors = Path(authors)
    if (authors / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(authors), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out.stdout.strip()):
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    own, beside = authors / "ABOUT.md", authors.parent / "ABOUT.md"
    if own.is_file():
        match = re.search(r"at commit ([0-9a-f]{40})", own.read_text(errors="replace"))
        if match:
            return match.group(1)
    if beside.is_file():
        for line in beside.read_text(errors="replace").splitlines():
            match = re.search(r"\b([0-9a-f]{40})\b", line)
            if match and f"`{authors.name}/`" in line:
                return match.group(1)
    return "unknown"


def check_authors(authors: Path) -> Path:
    authors = Path(authors).expanduser().resolve()
    missing = [s for s in (*SCRIPTS, "src/data.py", "src/fusion.py") if not (authors / s).is_file()]
    if missing:
        raise HarnessError(f"--authors {authors} is not a clone of the authors' USAD code: missing {missing} "
                           f"(git clone https://github.com/xjpp2016/USAD)")
    return authors


def check_data(data: Path) -> Path:
    data = Path(data).expanduser().resolve()
    missing = [d for d in ("train/good", "test/good") if not (data / d).is_dir()]
    if missing:
        raise HarnessError(f"--data {data} is not a CoalAD-layout category folder: missing {missing}")
    return data


def prepare_work(work: Path, data: Path) -> Path:
    """Their working folder: data/coal_ad -> the data folder; earlier outputs of this tool removed."""
    work = Path(work).expanduser().resolve()
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        raise HarnessError(f"--work {work} is not empty and was not made by this tool: give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).touch()
    for sub in ("trained_models", "saved_models", "result", "_harness", "data", "inprocess"):
        path = work / sub
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    (work / "data").mkdir()
    (work / "data" / CATEGORY).symlink_to(data, target_is_directory=True)
    (work / "_harness").mkdir()
    return work


def copy_trained_models(work: Path) -> None:
    """trained_models/ -> saved_models/, as their README tells a user before test_fusion.py."""
    src, dst = work / "trained_models", work / "saved_models"
    if not src.is_dir():
        raise HarnessError(f"{src} is missing: their training scripts did not write their models")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


# --------------------------------------------------------------------------- seeded models


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global generator seeded inside, restored after (their seeds stay untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_weights(folder: Path, seed: int) -> Path:
    """The three tiny checkpoints, float16 state dicts, seeded: ViTs at timm's default 518 input (37 x 37 grid,
    like the real DINOv2 checkpoints) and a resnet18 without the unused layer4 / fc."""
    import timm
    import torch
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, (fname, kwargs)) in enumerate(TINY_VITS.items()):
        with seeded(seed + i):
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / fname)
    with seeded(seed + len(TINY_VITS)):
        net = torchvision.models.get_model(TINY_RESNET[0], weights=None)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()
             if not k.startswith(RESNET_UNUSED)}
    torch.save(state, folder / TINY_RESNET[1])
    return folder


def load_tiny_resnet(weights: Path, seed: int):
    import torch
    import torchvision

    with seeded(seed):
        net = torchvision.models.get_model(TINY_RESNET[0], weights=None)
    state = torch.load(weights / TINY_RESNET[1], map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    unused = [k for k in missing if not k.startswith(RESNET_UNUSED)]
    if unexpected or unused:
        raise HarnessError(f"{weights / TINY_RESNET[1]} is not a {TINY_RESNET[0]} state dict "
                           f"(missing {unused[:3]}, unexpected {unexpected[:3]})")
    return net  # layer4 / fc (unused by PatchCore) stay seeded random when the file leaves them out


def install_builders(backbones: str, weights: Path | None, seed: int) -> None:
    """Replace timm.create_model and torch.hub.load (their model builders) with seeded offline models."""
    import timm
    import torch
    import torchvision

    real_create = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if backbones == "full":
            with seeded(seed):
                return real_create(name, pretrained=False, **kwargs)
        if name not in TINY_VITS:
            raise HarnessError(f"the authors asked timm for {name!r}: no tiny checkpoint stands in for it")
        fname, tiny = TINY_VITS[name]
        return real_create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights / fname)),
                           **tiny, **kwargs)

    def hub_load(repo, model, *args, **kwargs):
        if backbones == "full":
            with seeded(seed):
                return torchvision.models.get_model(model, weights=None)
        return load_tiny_resnet(weights, seed)

    timm.create_model = create_model
    torch.hub.load = hub_load


def build_training_vits_at_branch_size() -> None:
    """Their training scripts make ``DINOv2AnomalyDetector(model_name=...)`` without ``img_size`` (class default
    336 / 224) and feed it ``VIT_SIZE`` px images: give that constructor the script's own ``VIT_SIZE``."""
    import src.ma2patch
    import src.ma_clu

    for cls in (src.ma_clu.DINOv2AnomalyDetector, src.ma2patch.DINOv2AnomalyDetector):
        real_init = cls.__init__

        def init(self, *args, _real=real_init, **kwargs):
            script = sys.modules["__main__"]  # runpy puts the running script there
            if not args[1:] and "img_size" not in kwargs:  # the class default: a training script
                if not hasattr(script, "VIT_SIZE"):
                    raise HarnessError(f"{getattr(script, '__file__', 'their script')} has no VIT_SIZE: cannot build "
                                       f"its ViT at the branch size; use --vit-train-size authors")
                kwargs["img_size"] = int(script.VIT_SIZE)
            _real(self, *args, **kwargs)

        cls.__init__ = init


def install_wget_stub() -> None:
    stub = types.ModuleType("wget")

    def download(url, *args, **kwargs):
        raise HarnessError(f"offline: their code tried to download {url}; --data must hold the dataset")

    stub.download = download
    sys.modules["wget"] = stub


# --------------------------------------------------------------------------- recording their outputs


def _has_pro_dependencies() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("pandas", "skimage"))


def _wrap(owner, name: str, after):
    """owner.name(...) runs as before; after(self, args, kwargs, result) sees each call."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        after(self, args, kwargs, result)
        return result

    setattr(owner, name, wrapper)
    return real


def _numpy(x):
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def install_recorders(record: dict) -> None:
    """Record, from inside their classes, what a reference needs (their code computes all of it)."""
    import src.data
    import src.fusion
    import src.ma_clu
    import src.patch_core
    import src.utils

    def subset(self, args, kwargs, result):  # PatchCore's random half of the training set
        base = Path(src.data.DATASETS_PATH) / self.cls
        record["pc_train_files"] = [Path(os.path.relpath(self.train_ds.dataset.samples[i][0], base)).as_posix()
                                    for i in self.train_ds.indices]

    def clusters(self, args, kwargs, result):  # MACLU's KMeans
        record["kmeans_centers"] = _numpy(self.kmeans.cluster_centers_)
        record["fg_cluster"] = int(self.foreground_cluster)

    def bank(self, args, kwargs, result):  # PatchCore's coreset memory bank
        record["pc_memory_bank"] = _numpy(self.memory_bank)

    def predict(self, args, kwargs, result):  # one test image through the fusion
        score, fused, branches = result
        size = tuple(args[0].shape[2:])
        record.setdefault("s_fused", []).append(float(score))
        record.setdefault("m_fused", []).append(_numpy(fused).squeeze())
        for key, name in (("obj", "detector_clu"), ("attr", "detector_m2p"), ("pc", "detector_pc")):
            out = branches[name]
            record.setdefault(f"s_{key}", []).append(float(out["score"]))
            record.setdefault(f"m_{key}", []).append(_numpy(out["segmentation_map"]).squeeze())
            at_eval = self._resize_to_target(self._ensure_4d_tensor(out["segmentation_map"]), size)
            record.setdefault(f"e_{key}", []).append(_numpy(at_eval).squeeze())  # as the Hadamard product gets it

    _wrap(src.data.CoalDataset, "_sample_train_data", subset)
    _wrap(src.ma_clu.DINOv2AnomalyDetector, "train", clusters)
    _wrap(src.patch_core.PatchCore, "fit", bank)
    _wrap(src.fusion.CombinedAnomalyDetector, "predict", predict)

    class RecordingLoader:
        """Their test loader, unchanged, recording each image's mask and label as it passes."""

        def __init__(self, loader):
            self.loader = loader
            base = Path(src.data.DATASETS_PATH) / CATEGORY
            record["files"] = [Path(os.path.relpath(p, base)).as_posix() for p, _ in loader.dataset.samples]

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for sample, mask, label in self.loader:
                record.setdefault("mask", []).append(_numpy(mask).squeeze() > 0.5)
                record.setdefault("label", []).append(int(label))
                yield sample, mask, label

    real_evaluate = src.fusion.CombinedAnomalyDetector.evaluate
    with_pro = _has_pro_dependencies()
    record["pro_source"] = "authors compute_pro" if with_pro else "none"

    def evaluate(self, test_dataloader, *args, **kwargs):
        if with_pro:
            kwargs["cal_pro"] = True
        result = real_evaluate(self, RecordingLoader(test_dataloader), *args, **kwargs)
        record["metric_image_auroc_fused"] = float(result["combined_image_rocauc"])
        record["metric_pixel_auroc_fused"] = float(result["combined_pixel_rocauc"])
        return result

    src.fusion.CombinedAnomalyDetector.evaluate = evaluate

    real_pro = src.utils.compute_pro

    def compute_pro(*args, **kwargs):
        value = real_pro(*args, **kwargs)
        record["metric_pro_auc_official"] = float(value)
        return value

    src.utils.compute_pro = compute_pro  # their evaluate imports it from src.utils at call time


def save_record(record: dict, path: Path) -> None:
    import numpy as np

    arrays = {}
    for key, value in record.items():
        if key in ("files", "pc_train_files", "pro_source"):
            arrays[key] = np.array(value, dtype=str)
        elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            arrays[key] = np.stack(value)
        else:
            arrays[key] = np.asarray(value)
    np.savez(path, **arrays)


# --------------------------------------------------------------------------- running their scripts


def run_scripts_here(authors: Path, work: Path, scripts, backbones: str, weights: Path | None, seed: int,
                     record_to: Path | None, times_to: Path | None, vit_train_size: str = "authors") -> None:
    """Inside one process: patch, then run each of their scripts as __main__ from their working folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(authors))
    os.chdir(work)
    install_wget_stub()
    install_builders(backbones, weights, seed)
    if vit_train_size == "branch":
        build_training_vits_at_branch_size()
    record: dict = {}
    if record_to is not None:
        install_recorders(record)
    times = {}
    for script in scripts:
        if script == "test_fusion.py":
            copy_trained_models(work)
        start = time.perf_counter()
        runpy.run_path(str(authors / script), run_name="__main__")
        times[script] = time.perf_counter() - start
    if record_to is not None:
        save_record(record, record_to)
    if times_to is not None:
        times_to.write_text(json.dumps(times))


def child_env(device: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if device == "cuda":
            raise HarnessError("--device cuda but torch sees no CUDA GPU here; use --device cpu")
        return "cpu"
    return f"cuda: {torch.cuda.get_device_name(0)}"


def run_child(authors: Path, work: Path, scripts, backbones: str, weights: Path | None, seed: int, device: str,
              record_to: Path | None = None, times_to: Path | None = None, vit_train_size: str = "authors") -> float:
    """One process running ``scripts``; its wall time (start-up included). Output in WORK/_harness/<name>.log."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "_run", "--authors", str(authors), "--work", str(work),
           "--backbones", backbones, "--seed", str(seed), "--vit-train-size", vit_train_size]
    if weights is not None:
        cmd += ["--weights", str(weights)]
    if record_to is not None:
        cmd += ["--record", str(record_to)]
    if times_to is not None:
        cmd += ["--times", str(times_to)]
    cmd += list(scripts)
    log = work / "_harness" / f"{'+'.join(Path(s).stem for s in scripts)}.log"
    with open(log, "w") as out:
        start = time.perf_counter()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(device)).returncode
        wall = time.perf_counter() - start
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise HarnessError(f"their {', '.join(scripts)} failed (exit {rc}); log {log}:\n{tail}")
    return wall


def resolve_weights(backbones: str, weights: Path | None, work: Path, seed: int) -> Path | None:
    if backbones == "golden":
        if weights is None:
            raise HarnessError("--backbones golden needs --weights DIR (e.g. tests/golden/weights)")
        weights = Path(weights).expanduser().resolve()
        missing = [f for f in (TINY_VITS[VIT_S][0], TINY_VITS[VIT_B][0], TINY_RESNET[1]) if not (weights / f).is_file()]
        if missing:
            raise HarnessError(f"--weights {weights} lacks {missing}")
        return weights
    if backbones == "tiny":
        return tiny_weights(work / "_harness" / "weights", seed)
    return None


# --------------------------------------------------------------------------- extract


def extract(authors: Path, data: Path, work: Path, backbones: str = "golden", weights: Path | None = None,
            seed: int = 0, device: str = "cpu", vit_train_size: str = "authors", one_process: bool = False) -> dict:
    """Their outputs on ``data``: a dict of arrays (float32 maps; ``e_*`` = branch maps at the evaluation size,
    as their fusion multiplies them) plus metadata (``authors_commit``, ``pro_source``, ``device``).

    One process per script, as a user runs them; ``one_process``: the four in one process (faster, same outputs:
    each script seeds everything itself)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    authors, data = check_authors(authors), check_data(data)
    work = prepare_work(work, data)
    weights = resolve_weights(backbones, weights, work, seed)
    records = {}
    for scripts in [SCRIPTS] if one_process else [[s] for s in SCRIPTS]:
        path = work / "_harness" / f"{Path(scripts[-1]).stem}.npz"
        run_child(authors, work, scripts, backbones, weights, seed, device, record_to=path,
                  vit_train_size=vit_train_size)
        with np.load(path) as z:
            records.update({k: z[k] for k in z.files})
    ref = {k: records[k] for k in records if k != "pro_source"}
    ref["label"] = ref["label"].astype(np.int64)
    ref["fg_cluster"] = np.int64(ref["fg_cluster"])
    for key in ("obj", "pc"):
        ref[f"metric_image_auroc_{key}"] = float(roc_auc_score(ref["label"], ref[f"s_{key}"]))
    meta = {"authors_commit": authors_commit(authors), "backbones": backbones, "seed": seed,
            "vit_train_size": vit_train_size,
            "device": device_name(device), "pro_source": str(records["pro_source"])}
    if "metric_pro_auc_official" not in ref:  # their compute_pro needs pandas + scikit-image
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from usad.core.metrics import pro_auc_usad

        ref["metric_pro_auc_official"] = float(pro_auc_usad(ref["mask"], ref["m_fused"], ref["label"]))
        meta["pro_source"] = "usad.core.metrics.pro_auc_usad (pandas or scikit-image missing for their compute_pro)"
    for key in [k for k in ref if k.startswith("metric_")]:
        ref[key] = np.float64(ref[key])
    return {"arrays": ref, "meta": meta}


REFERENCE_KEYS = ("files", "label", "s_obj", "s_attr", "s_pc", "s_fused", "m_obj", "m_attr", "m_pc", "m_fused", "mask",
                  "pc_train_files", "pc_memory_bank", "kmeans_centers", "fg_cluster", "metric_image_auroc_fused",
                  "metric_image_auroc_obj", "metric_image_auroc_pc", "metric_pixel_auroc_fused",
                  "metric_pro_auc_official")


def write_reference(result: dict, out: Path) -> None:
    """The reference.npz of ../shared/golden/README.md (maps float16 at each branch's size) + a JSON sidecar."""
    import numpy as np

    arrays = dict(result["arrays"])
    for key in ("m_obj", "m_attr", "m_pc", "m_fused", "mask"):
        arrays[key] = arrays[key].astype(np.float16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **{k: arrays[k] for k in REFERENCE_KEYS})
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(result["meta"], indent=2) + "\n")


# --------------------------------------------------------------------------- time


def time_scripts(authors: Path, data: Path, work: Path, backbones: str = "full", weights: Path | None = None,
                 seed: int = 0, device: str = "auto", inprocess: bool = False, vit_train_size: str = "authors") -> dict:
    """Wall time of each of their scripts, each its own process (start-up included), in order."""
    authors, data = check_authors(authors), check_data(data)
    name = device_name(device)

    def fresh(folder: Path):
        folder = prepare_work(folder, data)
        return folder, resolve_weights(backbones, weights, folder, seed)

    folder, files = fresh(work)
    scripts = {s: run_child(authors, folder, [s], backbones, files, seed, device, vit_train_size=vit_train_size)
               for s in SCRIPTS}
    result = {"scripts": scripts, "train_s": sum(scripts[s] for s in TRAIN_SCRIPTS), "eval_s": scripts[SCRIPTS[3]],
              "device": name, "backbones": backbones, "vit_train_size": vit_train_size,
              "authors_commit": authors_commit(authors), "data": str(data)}
    if inprocess:
        folder, files = fresh(Path(work).expanduser().resolve() / "inprocess")  # the first run's logs stay
        times_to = folder / "_harness" / "inprocess.json"
        run_child(authors, folder, SCRIPTS, backbones, files, seed, device, times_to=times_to,
                  vit_train_size=vit_train_size)
        inner = json.loads(times_to.read_text())
        result["inprocess"] = {"scripts": inner, "train_s": sum(inner[s] for s in TRAIN_SCRIPTS),
                               "eval_s": inner[SCRIPTS[3]]}
    return result


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/authors_harness.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{extract,time}")

    def common(q, default_backbones: str, default_device: str):
        q.add_argument("--authors", required=True, type=Path, help="a clone of github.com/xjpp2016/USAD")
        q.add_argument("--data", required=True, type=Path, help="CoalAD-layout category folder (train/, test/, ...)")
        q.add_argument("--work", required=True, type=Path, help="their working folder (new, empty, or made by this tool)")
        q.add_argument("--backbones", choices=BACKBONES, default=default_backbones)
        q.add_argument("--weights", type=Path, help="folder of the tiny checkpoints (--backbones golden)")
        q.add_argument("--seed", type=int, default=0, help="seed of the random models (tiny, full)")
        q.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default_device)
        q.add_argument("--vit-train-size", choices=VIT_TRAIN_SIZES, default="authors",
                       help="authors: their scripts as they are; branch: training ViTs built at the size they are fed")
        q.add_argument("--out", required=True, type=Path)

    e = sub.add_parser("extract", help="their outputs -> reference.npz (+ .json sidecar)")
    common(e, "golden", "cpu")
    e.add_argument("--one-process", action="store_true", help="the four scripts in one process (faster, same outputs)")
    t = sub.add_parser("time", help="their wall time per script -> JSON")
    common(t, "full", "auto")
    t.add_argument("--inprocess", action="store_true", help="also time the four scripts inside one process")

    r = sub.add_parser("_run")  # inside a child process (not listed)
    r.add_argument("--authors", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--backbones", choices=BACKBONES, required=True)
    r.add_argument("--weights", type=Path)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--record", type=Path)
    r.add_argument("--times", type=Path)
    r.add_argument("--vit-train-size", choices=VIT_TRAIN_SIZES, default="authors")
    r.add_argument("scripts", nargs="+", choices=SCRIPTS)
    a = p.parse_args(argv)

    try:
        if a.command == "_run":
            run_scripts_here(a.authors, a.work, a.scripts, a.backbones, a.weights, a.seed, a.record, a.times,
                             a.vit_train_size)
        elif a.command == "extract":
            write_reference(extract(a.authors, a.data, a.work, a.backbones, a.weights, a.seed, a.device,
                                    a.vit_train_size, a.one_process), a.out)
            print(f"wrote {a.out} and {a.out.with_suffix('.json')}")
        else:
            result = time_scripts(a.authors, a.data, a.work, a.backbones, a.weights, a.seed, a.device, a.inprocess,
                                  a.vit_train_size)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
