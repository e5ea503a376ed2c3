"""CSAD's golden fixture, second half: the official code's patch-histogram scores, LGST maps, fused scores and one
LGST training step, on generated scenes with tiny seeded stand-ins for its backbone.

The official code (github.com/Tokichan/CSAD, a clone given with ``--authors``) runs UNMODIFIED in a subprocess,
working in a scratch folder, with:
- ``timm.create_model('hf_hub:timm/wide_resnet50_2.tv2_in1k', ...)`` patched to a tiny WideResNet of the same
  family (``ENCODER_KWARGS``: one Bottleneck per stage, width 8, the same 256 / 512 / 1024 channels), its weights
  from ``generated_state`` (seeded per tensor name, so our side rebuilds them without the clone);
- the LGST modules (``LocalStudent``, ``AutoEncoder``, ``ResNetTeacher.proj``) and the segmentor given
  ``generated_state`` weights right after the code builds them;
- stubs for what cannot run offline: HF ``datasets`` (the penalty images come from a generated folder instead of
  tiny-imagenet), ``.cuda()`` (the identity: their data code forces it), ``albumentations`` when absent (only
  their segmentor's training augmentation uses it);
- their module-level ``config`` (``CSAD.train`` reads it; their ``__main__`` defines it) set to the run's config.

What it records, from inside their code: the segmentation maps and per-grid distances of ``PatchClassDetector``
(``test_patch_histogram``), the teacher statistics, the raw validation maps and the normalised test maps of
``predict_stae`` (their ``map_normalization`` / ``test`` / ``val``), the branch scores they save under
``anomaly_score/``, the fused scores through their ``normalize2`` (each branch's scores matched by file), and the
first step of ``CSAD.train`` (its inputs, the dropout generator state, the losses it logs at iteration 0, gradients
and updated weights at seeded sample positions).

    python tools/make_golden.py --method csad --authors ../shared/authors/csad [--data LOCO_CATEGORY_DIR]
        [--out tests/models/csad/golden] [--data-seed 0] [--seed 0]

Without ``--data``, scenes are generated (``usad.core.data.loco_synthetic``, ``--data-seed``). The fixture:
``data/<category>/...`` (the 256 px images used), ``csad_reference.npz``, ``csad_manifest.json``; the first
half's ``seg_*`` files come from ``tools/golden_csad_seg.py`` (when present) on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from authors_harness import authors_commit  # noqa: E402 (tools/: one way to record a clone's commit)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "models" / "csad" / "golden"
TIMM_WRN = "hf_hub:timm/wide_resnet50_2.tv2_in1k"
ENCODER_KWARGS = {"layers": [1, 1, 1, 1], "width_per_group": 8}   # torchvision names (timm: base_width)
NUM_CLASSES = 4                   # the stand-in segmentor's classes (background included)
IMAGE_SIZE = 256
COUNTS = {"train": 4, "validation": 4, "good": 2, "logical_anomalies": 2, "structural_anomalies": 2}
SAMPLES_PER_TENSOR = 48           # gradient / weight positions recorded per parameter tensor
KINDS = ("good", "logical_anomalies", "structural_anomalies")
GENERATED_TRAIN = 20              # the first half's pseudo-label golden needs >= 20 (HDBSCAN); this half uses 4


class GoldenError(RuntimeError):
    """Bad arguments or a failed run of the official code: one message."""


# --------------------------------------------------------------------------- seeded weights (both sides)


def generated_tensor(name: str, like, seed: int):
    """A tensor shaped like ``like``, a function of (seed, name) only: He-uniform weights, small biases, unit norms,
    BatchNorm statistics (0, 1)."""
    import torch

    if name.endswith("num_batches_tracked"):
        return torch.zeros_like(like)
    if name.endswith("running_mean"):
        return torch.zeros_like(like)
    if name.endswith("running_var"):
        return torch.ones_like(like)
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 62))
    u = torch.rand(like.shape, generator=g, dtype=torch.float64) * 2 - 1
    if like.dim() > 1:
        fan_in = int(np.prod(like.shape[1:]))
        return (u * (6.0 / fan_in) ** 0.5).to(like.dtype)
    if name.endswith("weight"):
        return (1 + 0.1 * u).to(like.dtype)
    return (0.05 * u).to(like.dtype)


def generated_state(module, prefix: str, seed: int) -> dict:
    """``generated_tensor`` for every entry of ``module.state_dict()``, named ``prefix.<entry>``."""
    return {k: generated_tensor(f"{prefix}.{k}", v, seed) for k, v in module.state_dict().items()}


def encoder_state(seed: int) -> dict:
    """The stand-in WideResNet's weights, as a torchvision ResNet state dict (timm's names are the same)."""
    import torch
    from torchvision.models.resnet import Bottleneck, ResNet

    with torch.random.fork_rng(devices=[]):
        net = ResNet(Bottleneck, ENCODER_KWARGS["layers"], width_per_group=ENCODER_KWARGS["width_per_group"])
    return generated_state(net, "encoder", seed)


def sample_positions(numel: int, seed: int, name: str) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(numel, size=min(SAMPLES_PER_TENSOR, numel), replace=False))


def to_uint8(x) -> np.ndarray:
    """ImageNet-normalised (N, 3, H, W) -> the uint8 (N, H, W, 3) images it came from (checked exact)."""
    import torch

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    u8 = torch.round((x.detach().cpu().float() * std + mean) * 255).clamp(0, 255).to(torch.uint8)
    back = (u8.float().div(255) - mean) / std
    if not torch.allclose(back, x.detach().cpu().float(), atol=1e-5):
        raise GoldenError("a recorded input is not an ImageNet-normalised uint8 image")
    return u8.permute(0, 2, 3, 1).numpy()


# --------------------------------------------------------------------------- the clone and the data


def check_authors(authors: Path) -> Path:
    authors = Path(authors).expanduser().resolve()
    need = ("CSAD.py", "data_loader.py", "benchmark_performance.py", "models/model.py",
            "models/segmentation/patch_histogram.py", "models/segmentation/model.py", "configs/mvtecloco_train.yaml")
    missing = [n for n in need if not (authors / n).is_file()]
    if missing:
        raise GoldenError(f"--authors {authors} is not a clone of github.com/Tokichan/CSAD: missing {missing}")
    return authors


def copy_scenes(src: Path, dst: Path) -> dict[str, list[str]]:
    """The first COUNTS images of each split of a LOCO category folder, resized to 256 px (PIL bilinear, as both
    codes resize), into ``dst`` (LOCO layout). Returns the relative paths per split."""
    from PIL import Image

    places = {"train": "train/good", "validation": "validation/good",
              **{k: f"test/{k}" for k in KINDS}}
    out = {}
    for split, rel in places.items():
        files = sorted((src / rel).glob("*.png"))[:COUNTS[split]]
        if len(files) < COUNTS[split]:
            raise GoldenError(f"--data {src}: {rel} has {len(files)} PNG images, the fixture needs {COUNTS[split]}")
        (dst / rel).mkdir(parents=True, exist_ok=True)
        out[split] = []
        for f in files:
            with Image.open(f) as im:
                im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).save(dst / rel / f.name)
            out[split].append(f"{rel}/{f.name}")
    return out


def penalty_images(folder: Path, seed: int, n: int = 3) -> None:
    """Smooth random colour images standing in for tiny-imagenet (64 px, as its images)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 7)
    for i in range(n):
        low = rng.uniform(0, 255, size=(4, 4, 3))
        img = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((64, 64), Image.BICUBIC))
        Image.fromarray(img).save(folder / f"{i:03d}.png")


# --------------------------------------------------------------------------- the child: their code, patched


def _install_stubs(penalty_dir: Path) -> None:
    import importlib.util
    import types

    import torch
    from PIL import Image

    torch.Tensor.cuda = lambda self, *a, **k: self          # their data code forces .cuda()
    torch.nn.Module.cuda = lambda self, *a, **k: self
    datasets = types.ModuleType("datasets")                  # HF datasets: tiny-imagenet -> a local folder

    def load_dataset(name, split=None, **kwargs):
        return [{"image": Image.open(p).convert("RGB")} for p in sorted(penalty_dir.glob("*.png"))]

    datasets.load_dataset = load_dataset
    sys.modules["datasets"] = datasets
    if importlib.util.find_spec("albumentations") is None:  # only their segmentor's training transform uses it
        sys.modules["albumentations"] = types.ModuleType("albumentations")


def _install_builders(encoder_file: Path) -> None:
    import timm
    import torch

    real = timm.create_model
    state = torch.load(encoder_file, weights_only=True)

    def create_model(name, pretrained=False, **kwargs):
        if name != TIMM_WRN:
            raise GoldenError(f"their code asked timm for {name!r}: no stand-in for it")
        model = real("wide_resnet50_2", pretrained=False, layers=ENCODER_KWARGS["layers"],
                     base_width=ENCODER_KWARGS["width_per_group"], **kwargs)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise GoldenError(f"the stand-in encoder file lacks {missing[:3]}")
        model.load_state_dict({k: state[k] for k in own})
        return model

    timm.create_model = create_model


def _after_init(cls, fill):
    real = cls.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        fill(self)

    cls.__init__ = init


def _numpy(x):
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def child_main(spec: dict) -> None:
    """Runs in a fresh interpreter inside the work folder; writes child.npz / child.json there."""
    import torch

    work, authors, cat = Path(spec["work"]), Path(spec["authors"]), spec["category"]
    seed = int(spec["seed"])
    os.chdir(work)
    sys.path.insert(0, str(authors))
    os.environ.setdefault("MPLBACKEND", "Agg")
    _install_stubs(work / "penalty")
    _install_builders(work / "encoder.pth")
    torch.set_num_threads(max(1, int(spec.get("threads", 2))))
    rec: dict = {}
    meta: dict = {}

    import models.model as mm
    from models.segmentation import patch_histogram as ph
    from models.segmentation.dataloader import SegmentDatasetTest
    from models.segmentation.model import Segmentor

    _after_init(mm.LocalStudent, lambda m: m.load_state_dict(generated_state(m, "lgst.local", seed)))
    _after_init(mm.AutoEncoder, lambda m: m.load_state_dict(generated_state(m, "lgst.global_", seed)))
    _after_init(mm.ResNetTeacher, lambda m: m.proj.load_state_dict(generated_state(m.proj, "lgst.teacher.proj", seed)))

    data = work / "data" / cat

    # ------------------------------------------------------------ patch histogram (their test_patch_histogram)
    segmaps: list = []
    dists: list = []
    real_agg, real_detect = ph.PatchClassDetector.aggregate_grid, ph.PatchClassDetector.detect_grid

    def aggregate(self, segmap):
        if self.patch_size == 256:
            segmaps.append(np.asarray(segmap[0], np.uint8))
        return real_agg(self, segmap)

    def detect(self, segmap):
        d = real_detect(self, segmap)
        if self.patch_size == 256:
            segmaps.append(np.asarray(segmap[0], np.uint8))
        dists.append(float(d))
        return d

    ph.PatchClassDetector.aggregate_grid, ph.PatchClassDetector.detect_grid = aggregate, detect
    import timm

    encoder = timm.create_model(TIMM_WRN, pretrained=True, features_only=True, out_indices=[1, 2, 3]).eval()
    seg = Segmentor(num_classes=NUM_CLASSES, in_dim=[256, 1024], in_size=IMAGE_SIZE)
    seg.load_state_dict(generated_state(seg, "seg", seed))
    seg.eval()
    sets = {s: SegmentDatasetTest(image_path=str(data / pat), image_size=IMAGE_SIZE)
            for s, pat in (("train", "train/good/*.png"), ("validation", "validation/*/*.png"), ("test", "test/*/*.png"))}
    with torch.no_grad():  # centre the stand-in's class logits on the training images: every class appears
        train_x = torch.stack([sets["train"][i][0] for i in range(len(sets["train"]))])
        seg.fc2.conv3.bias -= seg(encoder(train_x)).mean(dim=(0, 2, 3))
    rec["seg_head_bias"] = _numpy(seg.fc2.conv3.bias)
    loaders = {s: torch.utils.data.DataLoader(d, batch_size=1, shuffle=False) for s, d in sets.items()}
    os.makedirs("anomaly_score", exist_ok=True)
    ph.test_patch_histogram(train_loader=loaders["train"], val_loader=loaders["validation"],
                            test_loader=loaders["test"], encoder=encoder, segmentor=seg, category=cat,
                            patch_size=[256, 128], overlap_ratio=[0, 0], save_score=True)
    rel = lambda p: Path(p).resolve().relative_to(data.resolve()).as_posix()  # noqa: E731
    order = {s: [rel(p) for p in d.image_paths] for s, d in sets.items()}
    n_tr = len(order["train"])
    rec["hist_segmaps"] = np.stack(segmaps)
    meta["hist_segmap_order"] = order["train"] + order["validation"] + order["test"]
    rec["hist_dists"] = np.array(dists).reshape(-1, 2)   # val then test, (whole image, 2 x 2 grid)
    meta["hist_dist_order"] = order["validation"] + order["test"]
    assert len(segmaps) == n_tr + len(dists) // 2
    params = np.load(f"anomaly_score/{cat}_patchhist_params.npz")
    for k in params.files:
        rec[f"hist_params_{k}"] = params[k]
    ph_test = {"logi": np.load(f"anomaly_score/{cat}_patchhist_logi_score.npy"),
               "struc": np.load(f"anomaly_score/{cat}_patchhist_struc_score.npy")}
    rec["hist_val_branch"] = np.load(f"anomaly_score/{cat}_patchhist_val_score.npy")

    # ------------------------------------------------------------ LGST: their CSAD class
    import CSAD as csad_mod

    config = csad_mod.read_config(str(authors / "configs" / "mvtecloco_train.yaml"))
    config.update({"category": cat, "seed": seed, "run_name": "LGST", "eval_freq": 10 ** 9,
                   "output_dir": str(work / "output"), "ckpt_dir": str(work / "ckpt")})
    config["Datasets"]["train"]["root"] = str(work / "data")
    config["Model"]["iterations"] = 2    # StepLR(step_size=int(0.95 * iterations)) needs >= 2; step 1 is recorded
    csad_mod.config = config              # CSAD.train reads the module-level config of their __main__

    # one training step, recorded from inside
    calls = {"local": [], "ae": None, "losses": {}}
    real_local, real_ae = mm.LocalStudent.forward, mm.AutoEncoder.forward

    def local_fwd(self, x):
        if self.training and len(calls["local"]) < 3:
            calls["local"].append(x.detach().clone())
        return real_local(self, x)

    def ae_fwd(self, x):
        if self.training and calls["ae"] is None:
            calls["ae"] = (torch.get_rng_state().clone(), x.detach().clone())
        return real_ae(self, x)

    mm.LocalStudent.forward, mm.AutoEncoder.forward = local_fwd, ae_fwd
    train = csad_mod.CSAD(config)
    rec["teacher_mean"] = _numpy(train.teacher_mean).ravel()
    rec["teacher_std"] = _numpy(train.teacher_std).ravel()
    named = [(f"local.{k}", p) for k, p in train.student.named_parameters()] + \
            [(f"global_.{k}", p) for k, p in train.autoencoder.named_parameters()]
    step_rec: dict = {}
    real_step = train.optimizer.step

    def step(*a, **k):
        first = not step_rec
        if first:
            for name, p in named:
                pos = sample_positions(p.numel(), seed, name)
                step_rec[name] = {"pos": pos, "before": _numpy(p.detach().reshape(-1)[pos]),
                                  "grad": _numpy(p.grad.reshape(-1)[pos]), "grad_norm": float(p.grad.double().norm()),
                                  "p0": p.detach().clone()}
        out = real_step(*a, **k)
        if first:
            for name, p in named:
                r = step_rec[name]
                r["after"] = _numpy(p.detach().reshape(-1)[r["pos"]])
                r["update_norm"] = float((p.detach().double() - r.pop("p0").double()).norm())
        return out

    train.optimizer.step = step
    real_scalar = train.writer.add_scalar

    def add_scalar(tag, value, it, *a, **k):
        if it == 0:
            calls["losses"][tag] = float(value)
        return real_scalar(tag, value, it, *a, **k)

    train.writer.add_scalar = add_scalar
    train.train()
    mm.LocalStudent.forward, mm.AutoEncoder.forward = real_local, real_ae
    img, pen, aug = calls["local"]
    rng_state, ae_in = calls["ae"]
    if not torch.equal(ae_in, aug):
        raise GoldenError("the global student's input is not the local student's third input")
    rec["step_image"], rec["step_penalty"], rec["step_aug"] = to_uint8(img), to_uint8(pen), to_uint8(aug)
    rec["step_rng_state"] = rng_state.numpy()
    meta["step_losses"] = calls["losses"]
    meta["step_lr"] = 2e-4
    meta["step_params"] = sorted(step_rec)
    for name, r in step_rec.items():
        for k in ("pos", "before", "grad", "after"):
            rec[f"step_{k}__{name}"] = r[k]
        rec[f"step_norms__{name}"] = np.array([r["grad_norm"], r["update_norm"]])

    # LGST inference from the same seeded weights (a fresh instance, as the code's evaluation sees it)
    stae: list = []
    real_predict = csad_mod.predict_stae

    def predict_stae(image, *a, **k):
        out = real_predict(image, *a, **k)
        stae.append((k.get("q_st_start") is not None, _numpy(out[0][0, 0]), _numpy(out[1][0, 0])))
        return out

    csad_mod.predict_stae = predict_stae
    inf = csad_mod.CSAD(config)
    for m in (inf.teacher, inf.student, inf.autoencoder):
        m.eval()
    q = inf.map_normalization(validation_loader=inf.validation_loader)
    inf.q_st_start, inf.q_st_end, inf.q_ae_start, inf.q_ae_end = q
    rec["lgst_quantiles"] = np.array([float(v) for v in q])
    rec["lgst_val_raw_st"] = np.stack([s for n, s, _ in stae if not n])
    rec["lgst_val_raw_ae"] = np.stack([a for n, _, a in stae if not n])
    stae.clear()
    inf.test(test_set=inf.test_set, iteration=0, save_img=True)
    rec["lgst_test_st"] = np.stack([s for _, s, _ in stae]).astype(np.float32)
    rec["lgst_test_ae"] = np.stack([a for _, _, a in stae]).astype(np.float32)
    inf.val(test_set=inf.validation_loader, iteration=0, save_img=True)
    csad_mod.predict_stae = real_predict
    meta["lgst_val_order"] = [rel(p) for p in inf.validation_set.img_paths]
    meta["lgst_test_order"] = [rel(p) for p in inf.test_set.dataset.img_paths]
    lg_test = {"logi": np.load(f"anomaly_score/{cat}_LGST_logi_score.npy"),
               "struc": np.load(f"anomaly_score/{cat}_LGST_struc_score.npy")}
    rec["lgst_val_scores"] = np.load(f"anomaly_score/{cat}_LGST_val_score.npy")

    # ------------------------------------------------------------ fusion: their normalize2, branches matched by file
    import benchmark_performance as bp

    def by_file(saved, test_order):
        """Their saved logi / struc arrays (test order, good + one kind each) -> {file: score}."""
        out = {}
        for key, kind in (("logi", "logical_anomalies"), ("struc", "structural_anomalies")):
            files = [p for p in test_order if p.split("/")[1] in ("good", kind)]
            out.update(dict(zip(files, saved[key].tolist())))
        return out

    ph_by, lg_by = by_file(ph_test, order["test"]), by_file(lg_test, meta["lgst_test_order"])
    files = sorted(ph_by)
    ph_arr, lg_arr = np.array([ph_by[f] for f in files]), np.array([lg_by[f] for f in files])
    rec["fused_hist"], rec["fused_lgst"] = ph_arr, lg_arr
    rec["fused"] = bp.normalize2(ph_arr, rec["hist_val_branch"]) + bp.normalize2(lg_arr, rec["lgst_val_scores"])
    meta["fused_order"] = files
    np.savez(work / "child.npz", **rec)
    (work / "child.json").write_text(json.dumps(meta, indent=1))


# --------------------------------------------------------------------------- the parent


def run_child(authors: Path, work: Path, category: str, seed: int, threads: int) -> tuple[dict, dict]:
    spec = {"work": str(work), "authors": str(authors), "category": category, "seed": seed, "threads": threads}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg",
           "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    log = work / "child.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                              stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise GoldenError(f"their code failed (exit {proc.returncode}); log {log}:\n{tail}")
    with np.load(work / "child.npz") as z:
        rec = {k: z[k] for k in z.files}
    return rec, json.loads((work / "child.json").read_text())


def prepare_work(work: Path, authors: Path, data: Path, category: str, seed: int) -> dict:
    import torch

    for name in ("configs", "models", "CSAD.py"):   # CSAD.__init__ copies these from its working folder
        (work / name).symlink_to(authors / name)
    files = copy_scenes(data, work / "data" / category)
    penalty_images(work / "penalty", seed)
    torch.save(encoder_state(seed), work / "encoder.pth")
    return files


def make_golden(authors: Path, out: Path, data: Path | None, data_seed: int, seed: int, work: Path | None,
                threads: int = 2, with_seg: bool = True) -> dict:
    authors = check_authors(authors)
    out = Path(out)
    scratch = Path(tempfile.mkdtemp(prefix="golden_csad_")) if work is None else Path(work)
    scratch.mkdir(parents=True, exist_ok=True)
    if any(scratch.iterdir()):
        raise GoldenError(f"--work {scratch} is not empty: give a new or empty folder")
    try:
        generated = data is None
        if generated:
            from usad.core.data.loco_synthetic import make_synthetic_loco

            data = make_synthetic_loco(scratch / "generated", category="pushpins", n_train=GENERATED_TRAIN,
                                       n_validation=COUNTS["validation"], n_test_good=COUNTS["good"],
                                       n_logical=COUNTS["logical_anomalies"],
                                       n_structural=COUNTS["structural_anomalies"], size=IMAGE_SIZE, seed=data_seed)
        data = Path(data).resolve()
        category = data.name
        work = scratch / "work"
        work.mkdir()
        files = prepare_work(work, authors, data, category, seed)
        rec, meta = run_child(authors, work, category, seed, threads)
        out.mkdir(parents=True, exist_ok=True)
        if (out / "data").exists():
            shutil.rmtree(out / "data")
        shutil.copytree(work / "data", out / "data")
        np.savez_compressed(out / "csad_reference.npz", **rec)
        manifest = {"authors_commit": authors_commit(authors), "category": category, "seed": seed,
                    "data": "generated" if generated else str(data), "data_seed": data_seed if generated else None,
                    "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES, "encoder_kwargs": ENCODER_KWARGS,
                    "files": files, **meta, "versions": versions()}
        (out / "csad_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if with_seg:
            try:
                import golden_csad_seg
            except ImportError:
                print("note: tools/golden_csad_seg.py not found: the segmentor part of the fixture is not made",
                      file=sys.stderr)
            else:
                golden_csad_seg.make_all(authors, data, out, seed=seed)
        return manifest
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)


def versions() -> dict:
    import timm
    import torch

    return {"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child_main(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(prog="python tools/make_golden.py --method csad", description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", type=Path, default=REPO.parent / "shared" / "authors" / "csad",
                   help="a clone of github.com/Tokichan/CSAD (default ../shared/authors/csad)")
    p.add_argument("--data", type=Path, help="a LOCO-layout category folder (default: generated scenes)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated scenes (without --data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stand-in weights and of their run")
    p.add_argument("--work", type=Path, help="keep the scratch folder here (must be new or empty)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-seg", action="store_true", help="skip the first half (tools/golden_csad_seg.py)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    try:
        manifest = make_golden(a.authors, a.out, a.data, a.data_seed, a.seed, a.work, a.threads, not a.no_seg)
    except GoldenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("authors_commit", "category", "seed", "step_losses")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- our side (the golden tests use these)


def fixture_folder() -> Path:
    """$USAD_CSAD_GOLDEN when set, else the committed fixture."""
    return Path(os.environ.get("USAD_CSAD_GOLDEN", DEFAULT_OUT))


def read_fixture(folder: Path) -> tuple[dict, dict]:
    folder = Path(folder)
    if not (folder / "csad_reference.npz").is_file():
        raise GoldenError(f"no CSAD golden fixture at {folder} (csad_reference.npz): remake it with "
                          f"python tools/make_golden.py --method csad --out {folder}")
    with np.load(folder / "csad_reference.npz") as z:
        rec = {k: z[k] for k in z.files}
    return rec, json.loads((folder / "csad_manifest.json").read_text())


def our_config(scratch: Path, seed: int, *overrides: str):
    """cfg with the stand-in encoder (weights written to ``scratch``) under the csad section's defaults."""
    import torch

    from usad.core.config import load_config

    scratch.mkdir(parents=True, exist_ok=True)
    weights = scratch / f"encoder_{seed}.pth"
    if not weights.is_file():
        torch.save(encoder_state(seed), weights)
    kw = ENCODER_KWARGS
    return load_config(None, [f"csad.backbone_weights={weights}", f"csad.image_size={IMAGE_SIZE}",
                              f"csad.backbone_kwargs={{layers: {kw['layers']}, width_per_group: {kw['width_per_group']}}}",
                              "device=cpu", *overrides])


def our_lgst(section, seed: int):
    """Our LGST with the stand-in weights the official modules were given."""
    from usad.models.csad.lgst import LGST

    lgst = LGST(section.lgst)
    for module, prefix in ((lgst.local, "lgst.local"), (lgst.global_, "lgst.global_"),
                           (lgst.teacher.proj, "lgst.teacher.proj")):
        module.load_state_dict(generated_state(module, prefix, seed))
    return lgst.eval()
