"""Semantic pseudo-labels from normal images only (CSAD Sec. 3.1), as the official code computes them.

    labels = make_pseudo_labels(section, files, category, device)     # section = cfg.csad

1. Masks of each training image (``masks_from_models`` with Grounded-SAM, see
   ``grounding.py``; or read from ``section.pseudo_labels`` = DIR, which skips the
   foundation models): ``DIR/<image stem>/refined_masks.png`` (instance ids),
   optionally ``grounding_mask.png`` (clustered in coarse mode, as the code does)
   and ``background.png``/``background.jpg`` (LSA). The authors' published label
   folders have this layout.
2. Component features: each instance cropped, its minimum-area rectangle's diagonal
   scaled to ``component_size``, rotated ``rotations`` times, WideResNet-50 layer-4
   features averaged over space and rotations (f^com), then a random Gaussian
   projection to ``proj_dim`` dimensions.
3. MeanShift clustering (bandwidth ``bandwidth``); clusters with fewer than
   int(``cluster_min_share`` x N) members are dropped (alpha = N / 2).
4. Class-area histograms (Eq. 1); HDBSCAN (scikit-learn's, as the code) with
   min_cluster_size int(``hist_min_cluster_share`` x N), lowered by one until a
   cluster appears; per cluster, the ``hist_topk_ratio`` share of all images closest
   (max-norm) to its mean histogram; the labelled set is the largest cluster's
   (``filter_hist``) or every cluster's; classes whose mean share in the largest
   cluster is at most ``class_min_area`` are dropped and the rest renumbered 1..K.
5. Training maps at ``image_size``: images (PIL bilinear), label maps (nearest, with
   the code's hole filling where ``fill_holes``), instance masks and backgrounds (nearest).

Images are matched to mask folders by file stem (the code matched them by position in
an unsorted glob: the same on MVTec LOCO's 000.png... names).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import binary_fill_holes

from usad.models.csad.lsa import instance_masks
from usad.models.csad.masks import (  # noqa: F401 (re-exported: the errors and rules live in masks.py)
    MissingPromptError, PseudoLabelError, binary255, category_settings, combine_filter, drop_small, merge, refined_coarse,
    refined_fine, split_connected)

log = logging.getLogger(__name__)

MASK_FILES = ("refined_masks.png", "grounding_mask.png")
BACKGROUND_FILES = ("background.png", "background.jpg")
PARALLEL_MEANSHIFT = 5000  # components above which MeanShift runs in all cores (the code: always n_jobs=-1)
FILL_MIN_PIXELS = 100   # the code's training loader: class masks of <= 100 pixels are left out before hole filling






@dataclass
class PseudoLabels:
    """Everything the segmentor trains from (arrays at image_size; row i = files[i])."""

    files: list
    images: np.ndarray
    label_maps: np.ndarray
    segments: np.ndarray
    backgrounds: np.ndarray
    labelled: np.ndarray
    unlabelled: np.ndarray
    histograms: np.ndarray
    num_classes: int
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- settings




# --------------------------------------------------------------------------- mask operations (numpy, the code's rules)
















# --------------------------------------------------------------------------- component features


def align_component(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The masked component cropped to its box, scaled so that its minimum-area rectangle's diagonal spans about
    ``size`` pixels, centred on a black ``size`` x ``size`` canvas."""
    masked = np.where(np.repeat(mask[..., None] != 0, 3, 2), image, 0).astype(image.dtype)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    c = max(contours, key=cv2.contourArea)
    x, y, w, h = cv2.boundingRect(c)
    box = cv2.boxPoints(cv2.minAreaRect(c))
    scale = size / (np.linalg.norm(box[0] - box[2], ord=2) + 1)
    crop = masked[y:y + h, x:x + w]
    new = np.clip((np.array([h, w]) * scale).astype(np.int32), 1, size)
    crop = cv2.resize(crop, (int(new[1]), int(new[0])), interpolation=cv2.INTER_LINEAR)
    ph, pw = (size - crop.shape[0]) // 2, (size - crop.shape[1]) // 2
    crop = cv2.copyMakeBorder(crop, ph, ph, pw, pw, cv2.BORDER_CONSTANT, value=0)
    top, left = int(crop.shape[0] != size), int(crop.shape[1] != size)  # odd margins: one more row / column
    return cv2.copyMakeBorder(crop, top, 0, left, 0, cv2.BORDER_CONSTANT, value=0)


def rotated_batch(crops, rotations: int) -> torch.Tensor:
    """Each crop rotated by np.linspace(0, 360, rotations) degrees (PIL bilinear), ImageNet-normalised."""
    from usad.models.csad.segmentor import normalize

    angles = np.linspace(0, 360, rotations)
    arr = np.stack([np.asarray(Image.fromarray(c).rotate(a, Image.BILINEAR)) for c in crops for a in angles])
    return normalize(arr, "cpu")


@torch.no_grad()
def component_features(model, images, masks_per_image, s: dict, device, chunk: int = 8) -> np.ndarray:
    """f^com of every component (rows in image order): layer-4 features averaged over space, then rotations."""
    crops = [align_component(img, m, s["component_size"]) for img, ms in zip(images, masks_per_image) for m in ms]
    r = s["rotations"]
    out = []
    for i in range(0, len(crops), chunk):
        x = rotated_batch(crops[i:i + chunk], r).to(device)
        f = model(x)[-1].mean((2, 3))
        out.append(f.view(-1, r, f.shape[1]).mean(1).cpu())
    if not out:
        raise PseudoLabelError("no component masks in any training image: nothing to cluster")
    return torch.cat(out).numpy()


def projection(in_dim: int, out_dim: int, std: float, seed: int) -> np.ndarray:
    """The code's random projection (a Linear layer with N(0, std) weights and zero bias), seeded: (out, in)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out_dim, in_dim, generator=g, dtype=torch.float32) * std).numpy()


# --------------------------------------------------------------------------- clustering and the histogram split


def cluster_components(features: np.ndarray, n_images: int, s: dict) -> np.ndarray:
    """MeanShift labels; clusters with fewer than int(cluster_min_share * n_images) members become -1."""
    from sklearn.cluster import MeanShift

    jobs = -1 if len(features) > PARALLEL_MEANSHIFT else None  # same labels; processes only pay off when large
    labels = MeanShift(bandwidth=s["bandwidth"], cluster_all=True, n_jobs=jobs).fit(features).labels_.copy()
    limit = int(n_images * s["cluster_min_share"])
    for k in range(labels.max() + 1):
        if np.sum(labels == k) < limit:
            labels[labels == k] = -1
    return labels


def area_histograms(masks_per_image, labels_per_image, n_bins: int, keep=None) -> np.ndarray:
    """Eq. 1 on instance masks: per image, the area share of each (kept, renumbered) cluster."""
    hists = np.zeros((len(masks_per_image), n_bins))
    for i, (ms, ls) in enumerate(zip(masks_per_image, labels_per_image)):
        for m, lab in zip(ms, ls):
            if lab == -1 or (keep is not None and lab not in keep):
                continue
            hists[i, lab if keep is None else keep[lab]] += np.count_nonzero(m)
        if ms:
            hists[i] /= ms[0].size
    return hists


def min_cluster_size(n_images: int, share: float) -> int:
    size = int(n_images * share)
    if size < 2:
        need = int(np.ceil(2 / share))
        raise PseudoLabelError(f"too few normal images for HDBSCAN: {n_images} training images give min_cluster_size "
                               f"int({share} x {n_images}) = {size} < 2; CSAD's histogram filter needs at least "
                               f"{need} normal images (or set pseudo.hist_min_cluster_share)")
    return size


def histogram_split(hists: np.ndarray, s: dict) -> dict:
    """HDBSCAN of the histograms -> labelled rows (good histograms), the largest cluster and the kept classes."""
    from sklearn.cluster import HDBSCAN

    n = len(hists)
    size = min_cluster_size(n, s["hist_min_cluster_share"])
    labels = HDBSCAN(min_cluster_size=size, copy=True).fit(hists).labels_
    while labels.max() == -1:
        size -= 1
        if size < 2:
            raise PseudoLabelError(f"HDBSCAN finds no cluster of consistent class histograms among the {n} training "
                                   f"images even at min_cluster_size 2: the masks are too inconsistent")
        labels = HDBSCAN(min_cluster_size=size, copy=True).fit(hists).labels_
    n_clusters = labels.max() + 1
    sizes = np.array([np.sum(labels == k) for k in range(n_clusters)])
    largest = int(np.argmax(sizes))
    good = []
    for k in range(n_clusters):
        mean = hists[labels == k].mean(0)
        good.append(np.argsort(np.abs(hists - mean).max(1))[: int(sizes[k] * s["hist_topk_ratio"])])
    good = good[largest] if s["filter_hist"] else np.concatenate(good)
    keep = np.where(hists[labels == largest].mean(0) > s["class_min_area"])[0]
    return {"hdbscan_labels": labels, "min_cluster_size": size, "largest": largest, "good": np.sort(good),
            "keep": keep}


def label_map(masks, labels, keep: dict, shape) -> np.ndarray:
    """The semantic pseudo-label map: each instance of a kept cluster painted with its new class id."""
    out = np.zeros(shape, np.uint8)
    for m, lab in zip(masks, labels):
        if lab != -1 and lab in keep:
            out[m != 0] = keep[lab] + 1
    return out


def fill_class_holes(labels: np.ndarray) -> np.ndarray:
    """The code's training-loader hole filling: each class with > 100 pixels hole-filled, painted largest first,
    then ids reassigned by its rank mapping (which renumbers classes unless sizes are already in id order, and
    shifts ids past a missing class: kept as the code computes it)."""
    masks = [binary_fill_holes(labels == i) for i in range(1, int(labels.max()) + 1)
             if np.count_nonzero(labels == i) > FILL_MIN_PIXELS]
    masks = [m for m in masks if np.sum(m) > 0]
    if not masks:
        return np.zeros_like(labels)
    painted = np.zeros(labels.shape, np.uint8)
    for i, m in enumerate(sorted(masks, key=np.sum, reverse=True)):
        painted[m] = i + 1
    order = np.argsort(np.array([np.sum(m) for m in masks]))[::-1]
    rank = {int(o) + 1: i + 1 for i, o in enumerate(order)}
    out = np.zeros_like(painted)
    for o in order + 1:
        out[painted == o] = rank[int(o)]
    return out


# --------------------------------------------------------------------------- inputs


def check_mask_folder(folder: Path, files) -> None:
    """One folder ``<stem>/refined_masks.png`` per training image, else a PseudoLabelError naming the key."""
    if not folder.is_dir():
        raise PseudoLabelError(f"csad.pseudo_labels = {str(folder)!r} is not a folder")
    missing = [f.stem for f in files if not (folder / f.stem / MASK_FILES[0]).is_file()]
    if missing:
        raise PseudoLabelError(
            f"csad.pseudo_labels = {str(folder)!r} does not match the training images: no "
            f"<stem>/{MASK_FILES[0]} for {len(missing)} of {len(files)} images (first: {missing[:3]}); give one "
            f"folder per training image named after its file stem")


def read_mask_folder(folder: Path, files, fine_grained: bool):
    """Per image (by stem): (masks to cluster, refined masks, background or None), checked against the images."""
    folder = Path(folder)
    check_mask_folder(folder, files)
    out = []
    for f in files:
        d = folder / f.stem
        refined = _read_gray(d / MASK_FILES[0])
        grounding = d / MASK_FILES[1]
        cluster_src = refined if fine_grained or not grounding.is_file() else _read_gray(grounding)
        bg = next((_read_gray(d / b) for b in BACKGROUND_FILES if (d / b).is_file()), None)
        with Image.open(f) as im:
            size = im.size[::-1]
        for name, arr in (("refined_masks.png", refined), ("grounding_mask.png", cluster_src), ("background", bg)):
            if arr is not None and arr.shape != size:
                raise PseudoLabelError(f"csad.pseudo_labels: {d / name} is {arr.shape[1]}x{arr.shape[0]} but image "
                                       f"{f} is {size[1]}x{size[0]}: the masks must have the image's size")
        out.append((cluster_src, refined, bg))
    return out


def _read_gray(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")).copy()
    except OSError as e:
        raise PseudoLabelError(f"{path} is not a readable image: {e}") from None


def check_component_weights(section) -> None:
    """The component-feature weights: a local file (or "random" / pretrained false for smoke runs)."""
    from usad.core.backbones import BackboneWeightsError

    name = section.get("name", "csad")
    weights = section["component_weights"]
    if weights is None and section["pretrained"]:
        raise BackboneWeightsError(
            f"{name}.component_weights is not set: the component features use timm's wide_resnet50_2.racm_in1k "
            f"weights, which torchvision does not have; download them on a machine with network and pass "
            f"--set {name}.component_weights=/path/to/state_dict.pth")
    if weights not in (None, "random") and not Path(weights).expanduser().is_file():
        raise BackboneWeightsError(f"{name}.component_weights = {weights!r} does not exist; give the path of a local "
                                   f"WideResNet-50-2 state dict")


def check_pseudo_labels(section, files, category: str) -> None:
    """Every check that needs no compute: enough images, component weights, the mask folder or the prompts and
    the foundation-model checkpoints."""
    s = category_settings(section, category)
    min_cluster_size(len(files), s["hist_min_cluster_share"])
    check_component_weights(section)
    if section["pseudo_labels"] is not None:
        check_mask_folder(Path(section["pseudo_labels"]), [Path(f) for f in files])
        return
    if not s["text_prompt"]:
        raise MissingPromptError(
            f"category {category!r} has no GroundingDINO prompts: add category_kwargs.{category}.text_prompt "
            f"(e.g. --set 'csad.category_kwargs={{{category}: {{text_prompt: \"part . other part .\"}}}}') or give "
            f"precomputed masks with --set csad.pseudo_labels=DIR")
    from usad.models.csad.grounding import check_checkpoints

    check_checkpoints(section)


# --------------------------------------------------------------------------- the whole step


def make_pseudo_labels(section, files, category: str, device, seed: int = 0, save_to: Path | None = None,
                       component_model=None) -> PseudoLabels:
    """Steps 1-5 of the module docstring on the normal training images ``files``."""
    files = sorted((Path(f) for f in files), key=lambda p: p.name)
    check_pseudo_labels(section, files, category)
    s = category_settings(section, category)
    originals = []
    for f in files:
        with Image.open(f) as im:
            originals.append(np.asarray(im.convert("RGB")).copy())
    if section["pseudo_labels"] is not None:
        triples = read_mask_folder(Path(section["pseudo_labels"]), files, bool(s["fine_grained"]))
    else:
        from usad.models.csad.grounding import masks_from_models

        triples = masks_from_models(section, originals, s, device, save_to=save_to, stems=[f.stem for f in files])
    cluster_masks = [instance_masks(c, s["mask_min_area"]) for c, _, _ in triples]
    if component_model is None:
        component_model = component_backbone(section, device)
    feats = component_features(component_model, originals, cluster_masks, s, device)
    proj = projection(feats.shape[1], s["proj_dim"], s["proj_std"], seed)
    comp_labels = cluster_components(feats.astype(np.float32) @ proj.T, len(files), s)
    if comp_labels.max() < 0:
        raise PseudoLabelError(f"no component cluster has >= int({s['cluster_min_share']} x {len(files)}) members "
                               f"(MeanShift bandwidth {s['bandwidth']}): the masks do not repeat across images")
    bounds = np.cumsum([0] + [len(m) for m in cluster_masks])
    per_image = [comp_labels[bounds[i]:bounds[i + 1]] for i in range(len(files))]
    raw = area_histograms(cluster_masks, per_image, comp_labels.max() + 1)
    split = histogram_split(raw, s)
    keep = {int(k): i for i, k in enumerate(split["keep"])}
    maps = [label_map(m, l, keep, c.shape) for m, l, (c, _, _) in zip(cluster_masks, per_image, triples)]
    hists = area_histograms(cluster_masks, per_image, len(keep), keep)
    size = int(section["image_size"])
    labelled = np.unique(split["good"]).astype(np.int64)
    unlabelled = np.setdiff1d(np.arange(len(files)), labelled).astype(np.int64)
    return PseudoLabels(
        files=files,
        images=np.stack([_resize(o, size, Image.BILINEAR) for o in originals]),
        label_maps=np.stack([_resize(fill_class_holes(m) if s["fill_holes"] else m, size, Image.NEAREST)
                             for m in maps]),
        segments=np.stack([_resize(r, size, Image.NEAREST) for _, r, _ in triples]),
        backgrounds=np.stack([_resize(b if b is not None else np.zeros_like(r), size, Image.NEAREST)
                              for _, r, b in triples]),
        labelled=labelled, unlabelled=unlabelled, histograms=hists, num_classes=len(keep) + 1,
        info={"category": category, "components": len(comp_labels), "clusters_kept": len(set(comp_labels) - {-1}),
              "classes": len(keep), "hdbscan_min_cluster_size": int(split["min_cluster_size"]),
              "histogram_clusters": int(split["hdbscan_labels"].max() + 1), "labelled": len(labelled),
              "unlabelled": len(unlabelled), "component_labels": comp_labels.tolist()},
    )


def _resize(arr: np.ndarray, size: int, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((size, size), resample))


def component_backbone(section, device):
    """WideResNet-50 up to layer 4 with the component-feature weights (timm's default wide_resnet50_2 tag,
    racm_in1k, from the local file ``component_weights``)."""
    from usad.models.csad.segmentor import WideResNetEncoder, build_wide_resnet

    name = section.get("name", "csad")
    check_component_weights(section)
    net = build_wide_resnet(section["component_weights"], False, section.get("backbone_kwargs", None),
                            f"{name}.component_weights")
    return WideResNetEncoder(net, (4,)).to(device)
