"""CSAD and AeCSAD as methods of ``usad.compare`` (``usad.models.base.Method``).

Pipeline (``fit``): semantic pseudo-labels of the training images (``pseudo_labels``: Grounded-SAM, or a folder of
precomputed masks with ``<name>.pseudo_labels=DIR``) -> component segmentor (``segmentor``) -> patch-histogram
Gaussians of the segmented training images (``histogram``) -> LGST students trained against the teacher
(``lgst``, ``lgst_train``) -> LGST map quantiles and both branches' trimmed statistics on the validation images
(``fusion``). ``predict``: one backbone pass per batch serves the segmentor and the teacher; the image score is the
sum of the two branches' trimmed z-scores, the map is the LGST map (local + global) at the image size.

``AeCSAD`` is the same class under the section ``aecsad`` (``configs/methods/aecsad.yaml``): its self-attention,
losses, schedules and histogram layout distance are config values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from usad.core.artifacts import ArtifactError, load_artifact, save_artifact
from usad.core.backbones import BackboneWeightsError
from usad.core.errors import UsadError
from usad.models.base import Method, Split
from usad.models.csad import fusion as fz
from usad.models.csad.histogram import PatchHistogram
from usad.models.csad.lgst import LGST
from usad.models.csad.lgst_train import penalty_files, train_lgst

log = logging.getLogger("usad")

BRANCHES = ("patch_histogram", "lgst")


class CSADError(UsadError, ValueError):
    """Inputs CSAD cannot fit on (no validation images, an unknown branch)."""


def batched(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


class CSAD(Method):
    name = "csad"
    paper_name = "CSAD"

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)
        self.seg = None
        self.hist: PatchHistogram | None = None
        self.lgst: LGST | None = None
        self.hist_stats: np.ndarray | None = None     # (grids, 2): per-grid trimmed (mean, std)
        self.branch_stats: np.ndarray | None = None   # (2, 2): patch histogram, LGST
        self.history: list[dict] = []

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        """Local files named by the config (backbone weights, penalty images) and the branch names."""
        s = self.section
        w = s.backbone_weights
        if w and not Path(w).expanduser().is_file():
            raise BackboneWeightsError(f"{self.config_key('backbone_weights')} = {w!r} does not exist; give the path of "
                                       f"the WideResNet-50 (tv2_in1k) state dict")
        if s.lgst.penalty:
            penalty_files(s.lgst.penalty_dir, self.config_key("lgst.penalty_dir"))
        unknown = [b for b in s.fusion.branches if b not in BRANCHES]
        if unknown or not s.fusion.branches:
            raise CSADError(f"{self.config_key('fusion.branches')} = {list(s.fusion.branches)}: choose one or both of "
                            f"{list(BRANCHES)}")
        if s.histogram.fit_on not in ("train", "labelled"):
            raise CSADError(f"{self.config_key('histogram.fit_on')} must be train or labelled, got {s.histogram.fit_on!r}")

    def check_split(self, split: Split) -> None:
        from usad.models.csad.pseudo_labels import check_pseudo_labels

        if not split.validation:
            raise CSADError(f"{self.name} needs validation images (validation/good, or a held-out share of "
                            f"train/good): its LGST maps and score fusion are normalised on them")
        check_pseudo_labels(self.section, split.train, split.category)

    # ---------------------------------------------------------------- fitting
    def images(self, files) -> torch.Tensor:
        """uint8 (N, 3, S, S) on the device, resized as the code's transforms.Resize (PIL bilinear)."""
        from usad.models.csad.segmentor import load_images

        arr = load_images(files, self.section.image_size)
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(self.device)

    def normalised(self, images_u8: torch.Tensor) -> torch.Tensor:
        from usad.models.csad.lgst_train import normalise

        return normalise(images_u8.float().div(255))

    def features(self, images_u8: torch.Tensor):
        """Per batch: (normalised images, (f1, f2, f3)) from one backbone pass."""
        for sl in batched(images_u8.shape[0], self.cfg.data.batch_size):
            x = self.normalised(images_u8[sl])
            yield sl, x, self.seg.encode(x)

    def segmentation(self, images_u8: torch.Tensor) -> torch.Tensor:
        out = [self.seg.decode(f).argmax(1) for _, _, f in self.features(images_u8)]
        return torch.cat(out)

    def segmentor(self):
        """The segmentor and its frozen backbone, built under the run's seed (random smoke-run weights then
        agree between ``fit`` and ``load``)."""
        from usad.models.csad.segmentor import Segmentor

        torch.manual_seed(self.cfg.seed)
        return Segmentor(self.section, self.device)

    def fit(self, split: Split) -> None:
        from usad.models.csad.pseudo_labels import make_pseudo_labels

        s = self.section
        self.check()
        self.check_split(split)
        torch.manual_seed(self.cfg.seed)
        labels = make_pseudo_labels(s, split.train, split.category, self.device)
        self.seg = self.segmentor()
        self.seg.fit_pseudo(labels)
        train = torch.from_numpy(labels.images).permute(0, 3, 1, 2).contiguous().to(self.device)
        val = self.images(split.validation)

        # patch histogram: Gaussians of the training images' segmentations (Eq. 4)
        fit_rows = torch.as_tensor(labels.labelled) if s.histogram.fit_on == "labelled" else slice(None)
        self.hist = PatchHistogram(self.seg.num_classes, s.histogram.patches, s.histogram.distances)
        self.hist.fit(self.segmentation(train[fit_rows]))

        # LGST: teacher statistics, students, map quantiles
        torch.manual_seed(self.cfg.seed)
        self.lgst = LGST(s.lgst).to(self.device)
        self.lgst.set_teacher_stats(lambda: ((f[1], f[2]) for _, _, f in self.features(train)))
        penalty = penalty_files(s.lgst.penalty_dir, self.config_key("lgst.penalty_dir")) if s.lgst.penalty else None
        workers = self.cfg.data.num_workers if isinstance(self.cfg.data.num_workers, int) else 0
        self.history = train_lgst(self.lgst, s.lgst, lambda x: self.seg.encode(x)[1:], train, penalty,
                                  self.cfg.seed, workers)
        self.lgst.set_quantiles(lambda: (self.lgst.raw_maps(x, f[1], f[2]) for _, x, f in self.features(val)))

        # fusion statistics on the validation images
        hist_val, lgst_val, _ = self.branch_scores(val)
        lo, hi = s.fusion.trim
        self.hist_stats, ph_val = fz.fit_fusion(hist_val, lo, hi, f"{self.name} patch histogram")
        self.branch_stats = np.array([fz.trimmed_stats(ph_val, lo, hi, f"{self.name} patch histogram"),
                                      fz.trimmed_stats(lgst_val, lo, hi, f"{self.name} LGST")])

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def branch_scores(self, images_u8: torch.Tensor):
        """(per-grid histogram distances (N, grids), LGST scores (N,), LGST maps (N, S, S)) as numpy."""
        hist, lg, maps = [], [], []
        for _, x, f in self.features(images_u8):
            hist.append(self.hist.scores(self.seg.decode(f).argmax(1)).cpu())
            score, m = self.lgst.predict(x, f[1], f[2])
            lg.append(score.double().cpu())
            maps.append(m.float().cpu())
        return torch.cat(hist).numpy(), torch.cat(lg).numpy(), torch.cat(maps).numpy()

    def fuse(self, hist_scores: np.ndarray, lgst_scores: np.ndarray) -> np.ndarray:
        """Sec. 3.5: z(patch histogram) + z(LGST), each branch score z-scored on the validation statistics."""
        ph = fz.fuse(hist_scores, self.hist_stats)
        branches = {"patch_histogram": fz.zscore(ph, self.branch_stats[0]),
                    "lgst": fz.zscore(lgst_scores, self.branch_stats[1])}
        return np.sum([branches[b] for b in self.section.fusion.branches], axis=0)

    def predict(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = [], []
        for sl in batched(len(files), max(1, self.cfg.data.batch_size)):
            hist, lg, m = self.branch_scores(self.images(files[sl]))
            scores.append(self.fuse(hist, lg))
            maps.append(m)
        out = np.concatenate(scores).astype(np.float32)
        if not np.isfinite(out).all():
            bad = [str(files[i]) for i in np.flatnonzero(~np.isfinite(out))[:3]]
            raise CSADError(f"{self.name}: non-finite scores for {bad} (a NaN in the model: retrain)")
        return out, np.concatenate(maps)

    # ---------------------------------------------------------------- saving
    def model_file(self, folder: Path) -> Path:
        return Path(folder) / f"{self.name}.pt"

    def save(self, folder: Path) -> None:
        tensors = {f"seg.{k}": v for k, v in self.seg.state_dict().items()}
        tensors.update({f"lgst.{k}": v for k, v in self.lgst.state_dict().items()})
        tensors.update(self.hist.tensors())
        tensors["fusion.hist_stats"] = torch.from_numpy(self.hist_stats)
        tensors["fusion.branch_stats"] = torch.from_numpy(self.branch_stats)
        info = {"final_losses": self.history[-1] if self.history else {}, "iterations": len(self.history)}
        save_artifact(self.model_file(folder), self.name, self.fit_config(), tensors, info)

    def load(self, folder: Path) -> bool:
        path = self.model_file(folder)
        if not path.is_file():
            return False
        try:
            payload = load_artifact(path, self.name, self.fit_config(),
                                    f"python -m usad.compare --methods {self.name} (refits)")
        except ArtifactError as e:
            log.info("%s: model file not reused (%s)", self.name, str(e).splitlines()[0])
            return False
        t = payload["tensors"]
        s = self.section
        self.seg = self.segmentor()
        self.seg.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("seg.")})
        self.lgst = LGST(s.lgst).to(self.device)
        self.lgst.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("lgst.")})
        self.lgst.eval()
        self.hist = PatchHistogram(int(t["hist.num_classes"]), s.histogram.patches, s.histogram.distances)
        self.hist.load_tensors({k: v.to(self.device) for k, v in t.items() if k.startswith("hist.")})
        self.hist_stats = t["fusion.hist_stats"].numpy()
        self.branch_stats = t["fusion.branch_stats"].numpy()
        return True

    def weights_files(self) -> dict[str, Path]:
        s = self.section
        return {self.config_key(k): Path(s[k]) for k in ("backbone_weights", "component_weights", "sam_weights",
                                                  "groundingdino_weights") if s.get(k)}


class AeCSAD(CSAD):
    """CSAD with AeCSAD's changes, all in ``configs/methods/aecsad.yaml``."""

    name = "aecsad"
    paper_name = "AeCSAD"
