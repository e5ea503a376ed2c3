"""NPGMF as a method of ``usad.compare`` (usad.models.base.Method): fit, predict, save, load.

    python -m usad.compare --methods npgmf [--set npgmf.branches=logical|structural|both]

``fit`` trains the logical module (logical.py) and fills the structural module's memory bank
(structural.py) on ``split.train``, then measures each map's pixel mean and std on
``split.validation`` (Eq. 11; never the test set). ``predict`` returns the fused, smoothed map at
the logical image size and its maximum (fusion.py). Each branch is kept in its own model file
(``npgmf_logical.pt``, ``npgmf_structural.pt``: tensors only, usad.core.artifacts), so the three
ablation rows share fitted branches. The paper's numbers: ``NPGMF.paper`` (paper.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from usad.core.artifacts import ArtifactError, load_artifact, save_artifact
from usad.core.backbones import resnet_builder
from usad.core.cli import seed_everything
from usad.core.config import ConfigError, plain
from usad.core.data.dataset import (NORMAL_KIND, Sample, TrainDataset, load_rgb, loader_workers, make_loader,
                                    train_transform)
from usad.core.errors import UsadError
from usad.models.base import Method, Split
from usad.models.npgmf.fusion import PixelStats, fuse, normalise, smooth_and_score
from usad.models.npgmf.logical import LogicalModule, check_image_size
from usad.models.npgmf.paper import PAPER
from usad.models.npgmf.prior import (DEFAULT_CLIP_MODEL, PriorError, category_text, clip_text_embeddings,
                                     read_embedding_file, require_open_clip)
from usad.models.npgmf.structural import StructuralModule

log = logging.getLogger(__name__)

BRANCHES = {"logical": ("logical",), "structural": ("structural",), "both": ("logical", "structural")}
MODEL_FILES = {"logical": "npgmf_logical.pt", "structural": "npgmf_structural.pt"}
REFIT_HINT = "python -m usad.compare --methods npgmf (delete the file to refit)"


class NPGMFError(UsadError):
    """An input NPGMF cannot use: no validation images, a model of another category."""


class ImageFiles(Dataset):
    """Each file once, resized for every branch: {size: (3, size, size)}."""

    def __init__(self, files: list[Path], sizes: set[int]):
        self.files, self.transforms = list(files), {s: train_transform(s) for s in sizes}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[int, torch.Tensor]:
        image = load_rgb(self.files[i])
        return {s: t(image) for s, t in self.transforms.items()}


def require_file(value: str | None, key: str, what: str) -> None:
    if value is not None and not Path(value).expanduser().is_file():
        raise ConfigError(f"config key {key!r} = {value!r} does not exist; give the path of {what}")


class NPGMF(Method):
    name = "npgmf"
    paper_name = "NPGMF"
    requirements_file = "requirements-npgmf.txt"  # open-clip-torch: only to compute the text embedding
    paper = PAPER

    @classmethod
    def paper_numbers(cls, cfg, category: str, layout: str) -> dict | None:
        """NPGMF's own numbers for this category (in %): MVTec LOCO AD sPRO@0.05 (Table I) and the mean image AUROC
        (Sec. IV-B; per category only in Fig. 8), MVTec AD image / pixel AUROC (Table II); with
        ``npgmf.branches`` logical or structural, Table V's row of that branch (means over the categories)."""
        branches = cfg.npgmf.branches if cfg is not None else "both"
        if layout == "loco":
            out = {}
            if category in PAPER["table1_loco_spro"]:
                out["spro_auc_0.05"] = 100 * PAPER["table1_loco_spro"][category]
            if category == "mean":
                out["image_auroc_mean"] = 100 * PAPER["fig8_loco_image_auroc"]["mean"]
            if branches != "both":
                out = {"spro_auc_0.05": 100 * PAPER["table5_ablation"][branches]["loco_spro"]}
            return out or None
        if category in PAPER["table2_mvtec_ad"]:
            if branches != "both":
                row = PAPER["table5_ablation"][branches]
                return {"image_auroc": 100 * row["mvtec_ad_image_auroc"], "pixel_auroc": 100 * row["mvtec_ad_pixel_auroc"]}
            image, pixel = PAPER["table2_mvtec_ad"][category]
            return {"image_auroc": 100 * image, "pixel_auroc": 100 * pixel}
        return None

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)
        self.category = cfg.data.category
        self.logical: LogicalModule | None = None
        self.structural: StructuralModule | None = None
        self.stats: dict[str, tuple[float, float]] = {}

    # ---------------------------------------------------------------- configuration
    @property
    def branches(self) -> tuple[str, ...]:
        return BRANCHES[self.section.branches]

    @property
    def map_size(self) -> int:
        return self.section.logical.image_size

    def check(self) -> None:
        s = self.section
        if s.branches not in BRANCHES:
            raise ConfigError(f"config key 'npgmf.branches' = {s.branches!r} must be one of {', '.join(BRANCHES)}")
        lc, sc, fc = s.logical, s.structural, s.fusion
        for key, value, n in (("logical.betas", lc.betas, 2), ("logical.loss_weights", lc.loss_weights, 3),
                              ("logical.decoder_layers", lc.decoder_layers, 3)):
            if not isinstance(value, list) or len(value) != n or not all(isinstance(v, (int, float)) for v in value):
                raise ConfigError(f"config key 'npgmf.{key}' = {value!r} must be a list of {n} numbers")
        if fc.weight_structural < 0 or fc.weight_logical < 0 or fc.sigma < 0:
            raise ConfigError("config keys 'npgmf.fusion.weight_structural', 'weight_logical' and 'sigma' must be >= 0")
        if "logical" in self.branches:
            check_image_size(lc.image_size, lc.lewin.win_size, "npgmf.logical")
            resnet_builder(lc.backbone, "npgmf.logical")
            require_file(lc.weights, "npgmf.logical.weights", f"a checkpoint of torchvision {lc.backbone}")
            self.check_text_source()
        if "structural" in self.branches:
            resnet_builder(sc.backbone, "npgmf.structural")
            require_file(sc.weights, "npgmf.structural.weights", f"a checkpoint of torchvision {sc.backbone}")
            if not 0 < sc.coreset_ratio <= 1 or not 0 < sc.train_ratio <= 1:
                raise ConfigError("config keys 'npgmf.structural.coreset_ratio' and 'train_ratio' must be in (0, 1]")

    def check_text_source(self) -> None:
        """The category's text embedding must come from a stored file or a local CLIP checkpoint."""
        s = self.section
        if s.text_embedding is not None:
            read_embedding_file(s.text_embedding, self.category)  # the file, and the category in it
            return
        if s.clip.weights is None:
            raise PriorError("NPGMF's logical branch needs the CLIP text embedding of the category name, and neither "
                             "npgmf.clip.weights (a local open_clip checkpoint of "
                             f"{s.clip.model or DEFAULT_CLIP_MODEL}) nor npgmf.text_embedding (a stored embedding "
                             "file, python -m usad.models.npgmf.prior) is set: pass one with --set")
        require_file(s.clip.weights, "npgmf.clip.weights", f"a local open_clip state dict of {s.clip.model}")
        require_open_clip("npgmf.clip")

    def text_embedding(self, category: str) -> torch.Tensor:
        s = self.section
        if s.text_embedding is not None:
            return read_embedding_file(s.text_embedding, category)
        return clip_text_embeddings([category_text(category, s.prompt)], s.clip.model, s.clip.weights,
                                    plain(s.clip.model_kwargs))[0]

    # ---------------------------------------------------------------- fit
    def fit(self, split: Split) -> None:
        if not split.validation:
            raise NPGMFError(f"NPGMF normalises each map with the pixel statistics of validation images (Eq. 11), and "
                             f"{split.root} has none: put normal images in {Path(split.root) / 'validation' / 'good'} "
                             f"(MVTec LOCO layout) or hold out a share of train/good; the test set is never used")
        missing = [str(p) for p in split.validation if not Path(p).is_file()]
        if missing:
            raise NPGMFError(f"{len(missing)} validation image(s) do not exist, e.g. {missing[0]}")
        self.category = split.category
        seed_everything(self.cfg.seed)
        if "logical" in self.branches:
            self.fit_logical(split)
        if "structural" in self.branches:
            self.fit_structural(split)

    def samples(self, files: list[Path]) -> list[Sample]:
        return [Sample(Path(p), 0, NORMAL_KIND, None) for p in files]

    def fit_logical(self, split: Split) -> None:
        lc = self.section.logical
        embedding = self.text_embedding(split.category)  # first: a missing checkpoint stops before any compute
        self.logical = LogicalModule(lc, self.device, embedding, precision=self.cfg.precision)
        dataset = TrainDataset(split.root, lc.image_size, self.samples(split.train))
        loader = DataLoader(dataset, batch_size=lc.batch_size, shuffle=True,  # RD4AD shuffles the training images
                            generator=torch.Generator().manual_seed(self.cfg.seed),
                            num_workers=loader_workers(self.cfg.data.num_workers, self.device))
        self.logical.fit(loader, lc.epochs)
        self.stats["logical"] = self.validation_stats("logical", split.validation)

    def fit_structural(self, split: Split) -> None:
        sc = self.section.structural
        self.structural = StructuralModule(sc, self.device, self.cfg.seed, precision=self.cfg.precision)
        picks = self.structural.subset(len(split.train))
        dataset = TrainDataset(split.root, sc.image_size, self.samples([split.train[i] for i in picks]))
        self.structural.fit(make_loader(dataset, self.cfg.data.batch_size, self.cfg.data.num_workers, self.device),
                            len(picks))
        self.stats["structural"] = self.validation_stats("structural", split.validation)

    def validation_stats(self, branch: str, files: list[Path]) -> tuple[float, float]:
        """Eq. 11's mu and sigma of ``branch``: all pixel scores of its raw maps on the validation images."""
        stats = PixelStats()
        for maps in self.raw_maps(files, (branch,)):
            stats.add(maps[branch])
        mean, std = stats.mean_std()
        log.info("NPGMF %s map on %d validation images: mean %.4g, std %.4g", branch, len(files), mean, std)
        return mean, std

    # ---------------------------------------------------------------- predict
    def raw_maps(self, files: list[Path], branches: tuple[str, ...]):
        """Batches of {branch: (B, S, S) raw map} at the map size."""
        sizes = {self.section.logical.image_size if b == "logical" else self.section.structural.image_size
                 for b in branches}
        loader = make_loader(ImageFiles(files, sizes), self.cfg.data.batch_size, self.cfg.data.num_workers,
                             self.device)
        for batch in loader:
            out = {}
            if "logical" in branches:
                out["logical"] = self.logical.maps(batch[self.section.logical.image_size])
            if "structural" in branches:
                images = batch[self.section.structural.image_size].to(self.device, non_blocking=True)
                out["structural"] = self.structural.maps(images, self.map_size)
            yield out

    def predict(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        fc = self.section.fusion
        weights = ({"structural": fc.weight_structural, "logical": fc.weight_logical} if len(self.branches) == 2
                   else {b: 1.0 for b in self.branches})  # one branch (Table V's single rows): its map alone
        scores, maps = [], []
        for raw in self.raw_maps(files, self.branches):
            z = {b: normalise(raw[b], *self.stats[b]) for b in self.branches}  # Eq. 11 terms
            s, m = smooth_and_score(fuse(z, weights), fc.sigma)
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    # ---------------------------------------------------------------- model files
    def branch_fit_config(self, branch: str) -> dict:
        s = self.section
        own = ({"logical": plain(s.logical), "clip": plain(s.clip), "prompt": s.prompt,
                "text_embedding": s.text_embedding} if branch == "logical" else {"structural": plain(s.structural)})
        return {"seed": self.cfg.seed, "precision": self.cfg.precision, "npgmf": own}

    def fit_config(self) -> dict:
        return {"seed": self.cfg.seed, "npgmf": {b: self.branch_fit_config(b)["npgmf"] for b in self.branches}}

    def weights_files(self) -> dict[str, Path]:
        s = self.section
        keys = {"npgmf.logical.weights": s.logical.weights, "npgmf.clip.weights": s.clip.weights,
                "npgmf.text_embedding": s.text_embedding, "npgmf.structural.weights": s.structural.weights}
        return {k: Path(v) for k, v in keys.items() if v is not None}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        info = {"category": self.category}
        if self.logical is not None:
            tensors = {f"model.{k}": v for k, v in self.logical.model.state_dict().items()}
            tensors["text_embedding"] = self.logical.embedding
            if not self.section.logical.pretrained and self.section.logical.weights is None:  # random: keep it
                tensors.update({f"encoder.{k}": v for k, v in self.logical.encoder.state_dict().items()})
            tensors["stats"] = torch.tensor(self.stats["logical"], dtype=torch.float64)
            save_artifact(folder / MODEL_FILES["logical"], "npgmf-logical", self.branch_fit_config("logical"), tensors,
                          {**info, "text": category_text(self.category, self.section.prompt)})
        if self.structural is not None:
            tensors = {"bank": self.structural.bank,
                       "stats": torch.tensor(self.stats["structural"], dtype=torch.float64)}
            if not self.section.structural.pretrained and self.section.structural.weights is None:  # random: keep it
                tensors.update({f"backbone.{k}": v for k, v in self.structural.patchcore.backbone.state_dict().items()})
            save_artifact(folder / MODEL_FILES["structural"], "npgmf-structural", self.branch_fit_config("structural"),
                          tensors, info)

    def read_branch(self, folder: Path, branch: str) -> dict | None:
        """The checked content of a branch's model file; None when absent or fitted with another config."""
        path = Path(folder) / MODEL_FILES[branch]
        if not path.is_file():
            return None
        payload = load_artifact(path, f"npgmf-{branch}", {}, REFIT_HINT)  # format and checksum
        if payload.get("fit_config") != self.branch_fit_config(branch):
            log.warning("%s was fitted with another NPGMF config: refitting", path)
            return None
        trained_for = payload["info"].get("category")
        if trained_for != self.category:
            raise NPGMFError(f"{path} holds an NPGMF model trained for category {trained_for!r}, not for "
                             f"{self.category!r}: NPGMF trains one model per category (its text prior is the category "
                             f"name); use that category's model folder, or fit one for {self.category!r}")
        return payload

    def load(self, folder: Path) -> bool:
        payloads = {b: self.read_branch(folder, b) for b in self.branches}
        if any(p is None for p in payloads.values()):
            return False
        if "logical" in payloads:
            t = payloads["logical"]["tensors"]
            self.logical = LogicalModule(self.section.logical, self.device, t["text_embedding"],
                                         precision=self.cfg.precision)
            self.load_state(self.logical.model, t, "model.", folder)
            if any(k.startswith("encoder.") for k in t):
                self.load_state(self.logical.encoder, t, "encoder.", folder)
            self.logical.model.eval()
            self.stats["logical"] = tuple(t["stats"].tolist())
        if "structural" in payloads:
            t = payloads["structural"]["tensors"]
            self.structural = StructuralModule(self.section.structural, self.device, self.cfg.seed,
                                               precision=self.cfg.precision)
            self.structural.bank = t["bank"]
            if any(k.startswith("backbone.") for k in t):
                self.load_state(self.structural.patchcore.backbone, t, "backbone.", folder)
            self.stats["structural"] = tuple(t["stats"].tolist())
        return True

    @staticmethod
    def load_state(module: torch.nn.Module, tensors: dict, prefix: str, folder: Path) -> None:
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise ArtifactError(f"the NPGMF model in {folder} does not fit the network built from the config: "
                                f"{str(e).splitlines()[0]}; {REFIT_HINT}") from None
