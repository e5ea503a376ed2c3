"""Golden fixture of CSAD's first half (pseudo-labels, segmentor, LSA) from the official code.

The official code is never copied into this project: this tool imports its UNMODIFIED modules from a
clone (``--authors``, default ../shared/authors/csad) in a subprocess and records what they compute on
generated scenes, with

- ``timm.create_model`` patched to a tiny WideResNet stand-in (torchvision ``ResNet(Bottleneck, [1, 1, 1, 1],
  width_per_group=8)``: the WRN-50 channel counts 256/512/1024/2048) whose weights are drawn from NumPy's
  PCG64 generator (``stand_in_state``), so a test rebuilds the very same weights without storing them;
- the decoder's initial weights and the pseudo-label projection drawn the same way;
- stubs for imports that cannot work offline or are not needed (``segment_anything``, ``grounded_sam``:
  GroundingDINO / SAM are not run; ``empatches``: the patch-histogram test code, not run here;
  ``albumentations``: imported but unused by their LSA module) and
  ``.cuda()`` made a no-op (the code calls it unconditionally in two places);
- instance masks made from the scenes themselves (4-connected components of saturated pixels), written in
  the code's mask layout (``datasets/masks/<category>/<NNN>/grounding_mask.png``), standing in for
  Grounded-SAM's masks.

Outputs (``OUT/seg_golden.npz`` + ``OUT/seg_manifest.json``, about 1 MB):
- ``make_segmentor_golden``: the decoder's logits on labelled scenes (eval mode); one training step
  (their ``SegmentorTrainer.train_one_epoch`` on one batch, all five losses on): each weighted loss, the
  gradients and parameter updates (small tensors whole, large ones at seeded positions, plus norms),
  the BatchNorm buffers after the step; LSA outputs for fixed NumPy seeds;
- ``make_pseudo_label_golden``: their ``ClassHistogram`` on the masks: raw component features (seeded
  columns and norms), the projected features it clustered, MeanShift labels, raw and filtered histograms, the labelled indices, the kept classes and the label maps.

    python tools/golden_csad_seg.py --authors ../shared/authors/csad --data DIR --out tests/models/csad/golden
    python tools/golden_csad_seg.py time [--authors DIR] [--repeats 5]     (CPU timings, theirs vs ours)
    (DIR: a LOCO-layout category folder with >= 20 train/good images, e.g. from usad.core.data.loco_synthetic)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from authors_harness import authors_commit  # noqa: E402 (tools/: one way to record a clone's commit)

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
DEFAULT_AUTHORS = REPO.parent / "shared" / "authors" / "csad"
STAND_IN = {"layers": [1, 1, 1, 1], "width_per_group": 8}
SIZE = 256                 # the code's segmentor size
NUM_CLASSES = 4            # background, pins, red block, blue block (any labels in 0..3)
BATCH = 4
SATURATION = 80            # scene masks: HSV saturation above this
MIN_PIXELS = 20            # ... in 4-connected parts larger than this
SAMPLE = 2048              # stored positions per large tensor
SMALL = 4096               # tensors up to this size are stored whole
LOGIT_STEP = 8             # logits stored every 8th pixel (the decoder upsamples x4 from 64 x 64)
FEATURE_COLUMNS = 128      # component features stored at these many seeded columns (+ each row's norm)
LSA_SEEDS = (1, 2, 3)
PSEUDO = {"bandwidth": 3.5, "filter_hist": True, "proj_dim": 512, "proj_std": 0.01}


# --------------------------------------------------------------------------- deterministic weights


def stand_in_state(seed: int, layers=None, width=None) -> dict:
    """The tiny WRN stand-in's state dict (torchvision key names), drawn from NumPy PCG64 (stable across versions)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    net = ResNet(Bottleneck, layers or STAND_IN["layers"], width_per_group=width or STAND_IN["width_per_group"])
    return draw_state(net.state_dict(), seed)


def draw_state(template: dict, seed: int) -> dict:
    """Values for every tensor of ``template`` (in its order): He-normal convolutions, BN near identity."""
    import torch

    rng = np.random.default_rng(seed)
    out = {}
    for k, t in template.items():
        shape = tuple(t.shape)
        if k.endswith("num_batches_tracked"):
            v = np.zeros(shape, np.int64)
        elif k.endswith("running_var"):
            v = 1.0 + 0.1 * np.abs(rng.standard_normal(shape))
        elif k.endswith(("running_mean", "bias")):
            v = 0.1 * rng.standard_normal(shape)
        elif t.ndim == 1:  # BN weight
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        out[k] = torch.from_numpy(np.asarray(v).astype(np.int64 if v.dtype == np.int64 else np.float32))
    return out


def stand_in_resnet(seed: int):
    from torchvision.models.resnet import Bottleneck, ResNet

    net = ResNet(Bottleneck, STAND_IN["layers"], width_per_group=STAND_IN["width_per_group"])
    net.load_state_dict(stand_in_state(seed))
    return net.eval()


def projection_matrix(seed: int, out_dim: int, in_dim: int, std: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((out_dim, in_dim)) * std).astype(np.float32)


def feature_columns(dim: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed + 3).choice(dim, size=min(FEATURE_COLUMNS, dim), replace=False))


def sample_positions(numel: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(numel, size=min(SAMPLE, numel), replace=False))


# --------------------------------------------------------------------------- inputs from the scenes


def scene_masks(image_rgb: np.ndarray) -> np.ndarray:
    """Instance ids (uint8) of the saturated parts of a scene (pins, blocks), largest first."""
    import cv2

    sat = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV)[..., 1] > SATURATION
    n, labels, stats, _ = cv2.connectedComponentsWithStats(sat.astype(np.uint8), connectivity=4)
    parts = [j for j in range(1, n) if stats[j, 4] > MIN_PIXELS]
    parts.sort(key=lambda j: -stats[j, 4])
    out = np.zeros(sat.shape, np.uint8)
    for i, j in enumerate(parts):
        out[labels == j] = i + 1
    return out


def scene_classes(image_rgb: np.ndarray) -> np.ndarray:
    """Class map (0 background, 1 yellow, 2 red, 3 blue) of a scene: the labelled maps of the segmentor golden."""
    import cv2

    hsv = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV)
    sat = hsv[..., 1] > SATURATION
    hue = hsv[..., 0].astype(int)
    out = np.zeros(sat.shape, np.uint8)
    out[sat & (hue >= 15) & (hue < 45)] = 1
    out[sat & ((hue < 15) | (hue >= 160))] = 2
    out[sat & (hue >= 90) & (hue < 140)] = 3
    return out


def fill_holes_cases(scene_map: np.ndarray) -> list[np.ndarray]:
    """Label maps for the hole filling: a scene's, one with a ring around a hole and class sizes out of id order,
    one with a class missing."""
    a = np.zeros((64, 64), np.uint8)
    a[4:40, 4:40] = 1
    a[14:30, 14:30] = 0          # the hole
    a[20:24, 20:24] = 2          # a small class 2 inside it
    a[44:60, 40:60] = 3          # class 3 larger than class 2
    b = a.copy()
    b[b == 2] = 0                # class 2 missing: class 3 is the second mask
    return [scene_map, a, b]


def train_files(data: Path) -> list[Path]:
    files = sorted((Path(data) / "train" / "good").glob("*.png"))
    if len(files) < 20:
        raise SystemExit(f"--data {data}: needs >= 20 train/good/*.png (HDBSCAN's min_cluster_size int(0.1 N) >= 2)")
    return files


def read_scenes(data: Path) -> np.ndarray:
    """The train/good scenes, RGB uint8 (N, H, W, 3) (stored in the fixture: the tests start from them)."""
    from PIL import Image

    out = []
    for f in train_files(data):
        with Image.open(f) as im:
            out.append(np.asarray(im.convert("RGB")))
    return np.stack(out)


def segmentor_inputs(scenes: np.ndarray, seed: int) -> dict:
    """The first 2 x BATCH scenes at 256 (PIL bilinear), class maps and instance masks (nearest), a background
    band, the histogram targets of the batch."""
    from PIL import Image

    imgs, maps, segs = [], [], []
    for rgb in scenes[: 2 * BATCH]:
        imgs.append(np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR)))
        maps.append(np.asarray(Image.fromarray(scene_classes(rgb)).resize((SIZE, SIZE), Image.NEAREST)))
        segs.append(np.asarray(Image.fromarray(scene_masks(rgb)).resize((SIZE, SIZE), Image.NEAREST)))
    imgs, maps, segs = np.stack(imgs), np.stack(maps), np.stack(segs)
    backgrounds = np.zeros_like(maps)
    backgrounds[:, : SIZE // 8] = 255      # a band the LSA must avoid (the code's SAM background)
    rand_index = np.random.default_rng(seed).integers(0, BATCH, BATCH)
    return {"images": imgs, "label_maps": maps, "segments": segs, "backgrounds": backgrounds, "rand_index": rand_index}


# --------------------------------------------------------------------------- the worker (runs their code)


def install_patches(seed: int) -> None:
    import timm
    import torch

    class StandIn(torch.nn.Module):
        """timm features_only look-alike: a list of the requested stage outputs."""

        def __init__(self, out_indices):
            super().__init__()
            net = stand_in_resnet(seed)
            self.stem = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            self.layers = torch.nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
            self.out_indices = list(out_indices)

        def forward(self, x):
            h, out = self.stem(x), []
            for i, layer in enumerate(self.layers, start=1):
                h = layer(h)
                if i in self.out_indices:
                    out.append(h)
            return out

    def create_model(name, pretrained=False, features_only=False, out_indices=(1, 2, 3), **kwargs):
        if "wide_resnet50_2" not in name or not features_only:
            raise RuntimeError(f"golden_csad_seg: no stand-in for timm model {name!r}")
        return StandIn(out_indices).eval()

    timm.create_model = create_model
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    import types

    for name, attrs in (("segment_anything", ("sam_model_registry", "sam_hq_model_registry", "SamPredictor",
                                              "SamAutomaticMaskGenerator")),
                        ("grounded_sam", ("load_image", "load_model", "get_grounding_output")),
                        ("empatches", ("EMPatches",)), ("albumentations", ())):
        mod = types.ModuleType(name)
        for a in attrs:
            setattr(mod, a, None)
        sys.modules[name] = mod


def tensor_record(prefix: str, tensors: dict, seed: int, rec: dict) -> None:
    for i, (k, v) in enumerate(tensors.items()):
        a = v.detach().double().cpu().numpy().ravel()
        if a.size <= SMALL:
            rec[f"{prefix}/{k}"] = a.astype(np.float32)
        else:
            rec[f"{prefix}/{k}"] = a[sample_positions(a.size, seed + i)].astype(np.float32)
            rec[f"{prefix}_norm/{k}"] = np.array(np.linalg.norm(a))


def worker_segmentor(job: dict, authors: Path) -> dict:
    import timm
    import torch
    from models.segmentation.loss import (
        ClassBalancedDiceLoss,
        EntropyLoss,
        FocalLoss,
        HistLoss,
        MulticlassCrossEntropyLoss,
    )
    from models.segmentation.lsa import labeled_lsa
    from models.segmentation.model import Segmentor as TheirSegmentor
    from models.segmentation.segmentor import SegmentorTrainer

    inp = dict(np.load(job["inputs"]))
    seed = job["seed"]
    rec = {}
    encoder = timm.create_model("hf_hub:timm/wide_resnet50_2.tv2_in1k", pretrained=True, features_only=True,
                                out_indices=[1, 2, 3])
    for p in encoder.parameters():
        p.requires_grad = False
    seg = TheirSegmentor(num_classes=NUM_CLASSES, in_dim=[256, 1024], in_size=SIZE)
    seg.load_state_dict(draw_state(seg.state_dict(), seed + 1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(inp["images"]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    seg.eval()
    with torch.no_grad():
        rec["logits"] = seg(encoder(x[:BATCH])).numpy()[:, :, ::LOGIT_STEP, ::LOGIT_STEP].astype(np.float32)

    # one training step with all five losses, through their own train_one_epoch
    trainer = SegmentorTrainer.__new__(SegmentorTrainer)
    trainer.device, trainer.encoder, trainer.segmentor = torch.device("cpu"), encoder.eval(), seg
    trainer.optimizer = torch.optim.Adam(seg.parameters(), lr=0.01, weight_decay=1e-5)
    trainer.loss_dict = {"ce": MulticlassCrossEntropyLoss(ignore_index=None), "focal": FocalLoss(ignore_index=None),
                         "dice": ClassBalancedDiceLoss(ignore_index=None), "hist": HistLoss(ignore_index=0),
                         "entropy": EntropyLoss()}
    trainer.loss_weight = {"ce": 0.5, "focal": 10, "dice": 1, "hist": 10, "entropy": 1}
    calls = []
    for cls in (MulticlassCrossEntropyLoss, FocalLoss, ClassBalancedDiceLoss, HistLoss, EntropyLoss):
        real = cls.forward

        def forward(self, *a, _real=real, _name=cls.__name__, **k):
            out = _real(self, *a, **k)
            calls.append((_name, float(out.detach())))
            return out

        cls.forward = forward
    gt = torch.from_numpy(inp["label_maps"][:BATCH].astype(np.int64)).unsqueeze(1)
    rand_gt = torch.from_numpy(inp["label_maps"][inp["rand_index"]].astype(np.int64)).unsqueeze(1)
    sup = (x[:BATCH], gt, rand_gt, ["x"] * BATCH)
    unsup = (x[BATCH:2 * BATCH], gt, rand_gt, ["x"] * BATCH)
    before = {k: v.detach().clone() for k, v in seg.state_dict().items()}

    class Bar:
        def set_description(self, *a, **k):
            pass

    total = trainer.train_one_epoch(Bar(), iter([sup]), iter([unsup]), 1, sup_only=False)
    weights = {"MulticlassCrossEntropyLoss": 0.5, "FocalLoss": 10, "ClassBalancedDiceLoss": 1, "HistLoss": 10}
    names = ["ce", "focal", "dice", "entropy_sup", "hist", "entropy_unsup"]
    rec["losses"] = np.array([v * weights.get(n, 1) for n, v in calls], np.float64)
    rec["loss_names"] = np.array(names)
    rec["loss_total"] = np.array(total)
    after = seg.state_dict()
    grads = {k: p.grad for k, p in seg.named_parameters()}
    tensor_record("grad", grads, seed, rec)
    tensor_record("update", {k: after[k] - before[k] for k, _ in seg.named_parameters()}, seed, rec)
    tensor_record("buffer", {k: v for k, v in after.items() if "running" in k}, seed, rec)

    # the training loader's hole filling (fill_holes: true categories)
    from models.segmentation.dataloader import merge_masks, split_masks_from_one_mask
    from scipy.ndimage import binary_fill_holes

    for k, m in enumerate(fill_holes_cases(inp["label_maps"][0])):
        rec[f"fill_in/{k}"] = m
        rec[f"fill_out/{k}"] = merge_masks([binary_fill_holes(x) for x in split_masks_from_one_mask(m)])

    # LSA with fixed NumPy seeds, source = target, as their dataset calls it
    cfg = {"min_distance": 0.2, "max_aug_num": 2, "min_aug_num": 1, "boundary": 0.1, "weight_power": 0.0}
    for s in LSA_SEEDS:
        i = s % BATCH
        np.random.seed(s)
        img, lab = labeled_lsa(inp["images"][i], inp["segments"][i], inp["label_maps"][i], inp["images"][i],
                               inp["segments"][i], inp["label_maps"][i], inp["backgrounds"][i], cfg)
        rec[f"lsa_image_xor/{s}"], rec[f"lsa_labels/{s}"] = np.bitwise_xor(img, inp["images"][i]), lab
    return rec


def worker_pseudo(job: dict, authors: Path) -> dict:
    import pseudo_label
    import timm
    import torch
    import torchvision
    from PIL import Image

    pseudo_label.transforms = torchvision.transforms  # their __main__ imports it; ClassHistogram needs it
    work = Path(job["work"])
    files = [Path(f) for f in job["files"]]
    category = "golden"
    for i, f in enumerate(files):
        with Image.open(f) as im:
            masks = scene_masks(np.asarray(im.convert("RGB")))
        d = work / "datasets" / "masks" / category / f"{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(masks).save(d / "grounding_mask.png")
    seed = job["seed"]
    real_cluster = pseudo_label.ClassHistogram.cluster_component_features

    def cluster(self, *a, **k):  # the random projection: the known seeded matrix instead of torch's draw
        self.projector.weight.data = torch.from_numpy(projection_matrix(seed + 2, *self.projector.weight.shape,
                                                                        PSEUDO["proj_std"]))
        return real_cluster(self, *a, **k)

    pseudo_label.ClassHistogram.cluster_component_features = cluster
    projected = {}
    real_save = pseudo_label.ClassHistogram.save_cluster_map

    def save_cluster_map(self, *a, **k):  # right after clustering: the projected features it clustered
        projected["x"] = np.asarray(self.all_component_feats, np.float32)
        return real_save(self, *a, **k)

    pseudo_label.ClassHistogram.save_cluster_map = save_cluster_map
    config = {"category": category, "image_size": SIZE, "feature_list": ["cnn_image"],
              "max_hyper": PSEUDO["bandwidth"], "no_cluster": False, "reduce_dim": True,
              "proj_dim": PSEUDO["proj_dim"], "filter_hist": PSEUDO["filter_hist"], "use_grounding_filter": True,
              "no_sam": True, "grounding_config": {}, "project_root": str(work)}
    extractor = timm.create_model("wide_resnet50_2", pretrained=True, features_only=True, out_indices=[4]).eval()
    ch = pseudo_label.ClassHistogram([str(f) for f in files], feature_extractor=extractor, config=config)
    info = work / "datasets" / "masks" / category / "info"
    raw = np.load(info / "all_component_feats.npz")["cnn_image"].astype(np.float64)
    cols = feature_columns(raw.shape[1], seed)
    rec = {"features": raw[:, cols].astype(np.float32), "feature_norms": np.linalg.norm(raw, axis=1),
           "feature_columns": cols, "projected": projected["x"], "component_labels": np.asarray(ch.component_labels),
           "raw_histograms": np.load(info / "raw_component_histogram.npy"),
           "good": np.load(info / "filtered_histogram_indices.npy"),
           "kept_classes": np.asarray(ch.filtered_labels),
           "histograms": np.load(info / "filtered_component_histogram.npy")}
    maps = [np.asarray(Image.open(work / "datasets" / "masks" / category / f"{i:03d}" / "filtered_cluster_map.png"))
            for i in range(len(files))]
    rec["label_maps"] = np.stack(maps).astype(np.uint8)
    return rec


def worker_time(job: dict, authors: Path) -> dict:
    """Seconds per image (segmentation at 256, batch 1) and per training step (batch 4 + 4), theirs and ours,
    alternating in one process on the same full-size random WRN-50 weights and decoder weights."""
    import time

    import torch
    from models.segmentation.loss import (
        ClassBalancedDiceLoss,
        EntropyLoss,
        FocalLoss,
        HistLoss,
        MulticlassCrossEntropyLoss,
    )
    from models.segmentation.model import Segmentor as TheirSegmentor
    from models.segmentation.segmentor import SegmentorTrainer
    from torchvision.models.resnet import Bottleneck, ResNet

    from usad.core.config import load_config
    from usad.models.csad.segmentor import Segmentor, WideResNetEncoder

    torch.set_num_threads(job.get("threads") or torch.get_num_threads())
    net = ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128)
    net.load_state_dict(draw_state(net.state_dict(), job["seed"]))
    net.eval()
    ours = Segmentor.__new__(Segmentor)  # our class, with the full-size WRN built from the same state
    ours.section = load_config(None, []).csad
    ours.cfg, ours.size, ours.device, ours.category = ours.section.segmentor, SIZE, torch.device("cpu"), None
    ours.encoder = WideResNetEncoder(net, (1, 2, 3))
    ours.build_decoder(NUM_CLASSES)
    theirs_enc = WideResNetEncoder(net, (1, 2, 3))  # same modules; theirs calls it as timm's list-returning encoder
    theirs = TheirSegmentor(num_classes=NUM_CLASSES, in_dim=[256, 1024], in_size=SIZE)
    theirs.load_state_dict(draw_state(theirs.state_dict(), job["seed"] + 1))
    ours.decoder.load_state_dict(draw_state(ours.decoder.state_dict(), job["seed"] + 1))
    x = torch.randn(2 * BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, NUM_CLASSES, (BATCH, SIZE, SIZE))
    trainer = SegmentorTrainer.__new__(SegmentorTrainer)
    trainer.device, trainer.encoder, trainer.segmentor = torch.device("cpu"), lambda t: list(theirs_enc(t)), theirs
    trainer.optimizer = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=1e-5)
    trainer.loss_dict = {"ce": MulticlassCrossEntropyLoss(), "focal": FocalLoss(), "dice": ClassBalancedDiceLoss(),
                         "hist": HistLoss(ignore_index=0), "entropy": EntropyLoss()}
    trainer.loss_weight = {"ce": 0.5, "focal": 10, "dice": 1, "hist": 10, "entropy": 1}
    opt = torch.optim.Adam(ours.decoder.parameters(), lr=0.01, weight_decay=1e-5)

    class Bar:
        def set_description(self, *a, **k):
            pass

    batch = (x[:BATCH], y.unsqueeze(1), y.unsqueeze(1), ["x"] * BATCH)
    ubatch = (x[BATCH:], y.unsqueeze(1), y.unsqueeze(1), ["x"] * BATCH)
    runs = {
        "infer_theirs": lambda: (theirs.eval(), theirs(list(theirs_enc(x[:1])))),
        "infer_ours": lambda: ours.segment(x[:1]),
        "step_theirs": lambda: trainer.train_one_epoch(Bar(), iter([batch]), iter([ubatch]), 1, sup_only=False),
        "step_ours": lambda: ours.train_step(opt, x[:BATCH], y, x[BATCH:], y, sup_only=False),
    }
    times = {k: [] for k in runs}
    with torch.no_grad():
        runs["infer_theirs"](), runs["infer_ours"]()  # warm-up
    for _ in range(job.get("repeats", 5)):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            if k.startswith("infer"):
                with torch.no_grad():
                    fn()
            else:
                fn()
            times[k].append(time.perf_counter() - t0)
    return {k: np.array(v) for k, v in times.items()}


def worker_main(job_path: Path, authors: Path) -> None:
    job = json.loads(job_path.read_text())
    sys.path.insert(0, str(authors))
    install_patches(job["seed"])
    fn = {"segmentor": worker_segmentor, "pseudo": worker_pseudo, "time": worker_time}[job["task"]]
    rec = fn(job, authors)
    np.savez(job["out"], **rec)


# --------------------------------------------------------------------------- the parent


def run_worker(task: str, authors: Path, work: Path, seed: int, **extra) -> dict:
    job = {"task": task, "seed": seed, "out": str(work / f"{task}_out.npz"), "work": str(work), **extra}
    path = work / f"{task}_job.json"
    path.write_text(json.dumps(job))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_worker", str(path), str(authors)],
                         cwd=work, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"their code failed ({task}):\n{res.stderr[-4000:]}")
    return dict(np.load(job["out"]))


def make_segmentor_golden(authors: Path, data: Path, out: Path, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    inp = segmentor_inputs(read_scenes(data), seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.savez(work / "inputs.npz", **inp)
        rec = run_worker("segmentor", Path(authors), work, seed, inputs=str(work / "inputs.npz"))
    np.savez_compressed(out / "seg_segmentor.npz", **rec)
    return rec


def make_pseudo_label_golden(authors: Path, data: Path, out: Path, seed: int = 0) -> dict:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    scenes = read_scenes(data)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, rgb in enumerate(scenes):  # the stored scenes, losslessly: what the tests start from
            files.append(Path(tmp) / f"{i:03d}.png")
            Image.fromarray(rgb).save(files[-1])
        rec = run_worker("pseudo", Path(authors), Path(tmp), seed, files=[str(f) for f in files])
    rec["scenes"] = scenes
    np.savez_compressed(out / "seg_pseudo.npz", **rec)
    return rec


def make_all(authors: Path, data: Path, out: Path, seed: int = 0) -> dict:
    import platform

    import sklearn
    import torch

    out = Path(out)
    pl = make_pseudo_label_golden(authors, data, out, seed)
    seg = make_segmentor_golden(authors, data, out, seed)
    manifest = {"authors_commit": authors_commit(Path(authors)), "seed": seed, "data": str(data),
                "train_files": [f.name for f in train_files(data)], "stand_in": STAND_IN, "size": SIZE,
                "num_classes": NUM_CLASSES, "batch": BATCH, "pseudo": PSEUDO, "logit_step": LOGIT_STEP, "lsa_seeds": list(LSA_SEEDS),
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "numpy": np.__version__, "sklearn": sklearn.__version__}}
    (out / "seg_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"segmentor": seg, "pseudo": pl, "manifest": manifest}


def time_segmentor(authors: Path, repeats: int = 5, seed: int = 0, threads: int = 0) -> dict:
    """Median seconds: segmentation of one 256 px image and one training step (4 labelled + 4 unlabelled),
    the official code and ours on the same full-size random weights, alternating in one process (CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        rec = run_worker("time", Path(authors), Path(tmp), seed, repeats=repeats, threads=threads)
    return {k: float(np.median(v)) for k, v in rec.items()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        worker_main(Path(argv[1]), Path(argv[2]))
        return 0
    if argv and argv[0] == "time":
        ap = argparse.ArgumentParser(description="time the segmentor: official code vs ours (CPU)")
        ap.add_argument("--authors", type=Path, default=DEFAULT_AUTHORS)
        ap.add_argument("--repeats", type=int, default=5)
        ap.add_argument("--threads", type=int, default=0)
        args = ap.parse_args(argv[1:])
        print(json.dumps(time_segmentor(args.authors.resolve(), args.repeats, threads=args.threads), indent=2))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--authors", type=Path, default=DEFAULT_AUTHORS)
    ap.add_argument("--data", type=Path, required=True, help="LOCO-layout category folder (train/good)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    make_all(args.authors.resolve(), args.data.resolve(), args.out.resolve(), args.seed)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
