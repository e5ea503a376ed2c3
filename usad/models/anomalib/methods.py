"""The Table 1 baselines from anomalib as methods of ``usad.compare``: PatchCore, EfficientAD, DRAEM, RD4AD.

Each adapter builds anomalib's module from its config section (``configs/methods/<section>.yaml``),
checks every weights file before compute, fits with Lightning on ``split.train`` (EfficientAD's
map quantiles on ``split.validation``), predicts raw scores and maps (anomalib's post-processor,
evaluator and visualiser are off: no thresholds, no normalisation, no metric-based choice), and
keeps its fitted tensors in the project's safe format (``usad.core.artifacts``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usad.core.artifacts import file_sha256, load_artifact, save_artifact
from usad.core.cli import seed_everything
from usad.core.config import ConfigError, plain
from usad.core.data.dataset import loader_workers
from usad.core.errors import UsadError
from usad.models.anomalib import training
from usad.models.anomalib.data import SplitDataModule
from usad.models.anomalib.weights import (download_anomalib_archive, download_backbone, load_backbone,
                                          random_weights_warning, require_file, require_image_folder)
from usad.models.base import Method, Split

BACKBONE_WHERE = ("It is torchvision's wide_resnet50_2 IMAGENET1K_V1 (wide_resnet50_2-95faca4d.pth from "
                  "download.pytorch.org), the same tensors as timm's wide_resnet50_2.tv_in1k (model.safetensors "
                  "on the Hugging Face hub, timm/wide_resnet50_2.tv_in1k).")


class NotFittedError(UsadError, RuntimeError):
    """``predict`` or ``save`` before ``fit`` or ``load``."""


class AnomalibMethod(Method):
    """What the four adapters share; a subclass sets its names and implements ``build``."""

    requires = ("anomalib",)
    requirements_file = "requirements-baselines.txt"
    validate_after = False         # one validation pass after training (EfficientAD's quantiles)
    frozen_prefixes: tuple[str, ...] = ()  # state of the torch model that comes from a weights file, not fitting

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)    # self.section_key, self.section: the config section (Method)
        self.module = None
        self.opened: dict[str, list[Path]] = {"fit": [], "predict": []}  # files the last fit / predict read
        self._sha: dict[str, str] = {}
        self.final_lr: list[float] = []  # learning rates at the end of fitting (schedules are tested on it)

    # ------------------------------------------------------------------ settings
    def limits(self) -> dict:
        """Lightning's max_epochs / max_steps."""
        return {"max_epochs": self.section.max_epochs}

    def train_batch_size(self) -> int:
        return self.section.batch_size

    def weights_files(self) -> dict[str, Path]:
        """Local files this run reads, by config key (only those that exist; ``check`` reports the others)."""
        return {}

    def fit_config(self) -> dict:
        """Seed, section, and the SHA-256 of each weights file: a changed file is a different fitted state."""
        shas = {}
        for key, path in self.weights_files().items():
            if Path(path).is_file():
                if key not in self._sha:
                    self._sha[key] = file_sha256(Path(path))
                shas[key] = self._sha[key]
        return {"seed": self.cfg.seed, self.section_key: plain(self.section), "weights_sha256": shas}

    def settings(self) -> dict:
        return {"section": self.section_key, **plain(self.section)}

    def _require_section(self) -> None:
        if self.section is None:
            raise ConfigError(f"the config has no section {self.section_key!r}: configs/methods/{self.section_key}.yaml is missing")

    # ------------------------------------------------------------------ the four steps
    def check(self) -> None:
        self._require_section()
        if self.section.image_size < 32:  # the ResNets' and DRAEM's five halvings
            raise ConfigError(f"config key '{self.section_key}.image_size' = {self.section.image_size} is too small (>= 32)")
        for name in ("batch_size", "max_epochs", "max_steps"):
            if name in self.section and self.section[name] < 1:
                raise ConfigError(f"config key '{self.section_key}.{name}' must be >= 1, got {self.section[name]}")

    def build(self):
        """anomalib's Lightning module, with its local weights loaded (seeded before)."""
        raise NotImplementedError

    def fit(self, split: Split) -> None:
        self.check()
        if not split.train:
            raise UsadError(f"{self.name}: no training images (split.train is empty)")
        seed_everything(self.cfg.seed)
        module = self.build()
        datamodule = SplitDataModule(split.train, split.validation, self.train_batch_size(), self.section.batch_size,
                                     num_workers=self.workers(), seed=self.cfg.seed)
        self.final_lr = training.fit(module, datamodule, self.device, self.validate_after, **self.limits())
        self.opened["fit"] = datamodule.opened()
        self.module = module

    def workers(self) -> int:
        """Data-loading processes (``data.num_workers``; files opened in workers are not in ``opened``)."""
        return loader_workers(self.cfg.data.num_workers, self.device)

    def image_scores(self, scores: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """The image score from anomalib's score and map (default: anomalib's score)."""
        return scores

    def predict(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        if self.module is None:
            raise NotFittedError(f"{self.name}: predict before fit or load")
        self.opened["predict"] = []
        scores, maps = training.predict(self.module, files, self.device, self.section.batch_size,
                                        num_workers=self.workers(), opened=self.opened["predict"])
        return self.image_scores(scores, maps).astype(np.float32), maps.astype(np.float32)

    # ------------------------------------------------------------------ fitted state
    def model_file(self, folder: Path) -> Path:
        return Path(folder) / f"{self.name}.pt"

    def fitted_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.module.model.state_dict().items() if not k.startswith(self.frozen_prefixes)}

    def save(self, folder: Path) -> None:
        if self.module is None:
            raise NotFittedError(f"{self.name}: nothing fitted to save")
        save_artifact(self.model_file(folder), self.name, self.fit_config(), self.fitted_tensors(),
                      info={"anomalib_module": type(self.module).__name__})

    def load(self, folder: Path) -> bool:
        path = self.model_file(folder)
        if not path.is_file():
            return False
        self.check()
        payload = load_artifact(path, self.name, self.fit_config(), f"python -m usad.compare --methods {self.name}")
        module = self.build()
        missing, unexpected = module.model.load_state_dict(payload["tensors"], strict=False)
        missing = [k for k in missing if not k.startswith(self.frozen_prefixes)]
        if missing or unexpected:
            raise UsadError(f"{path} does not fit the {self.name} model built from the config: missing {missing[:4]}, "
                            f"unexpected {unexpected[:4]}; refit with `python -m usad.compare --methods {self.name}`")
        self.module = module
        return True


class BackboneMethod(AnomalibMethod):
    """A method on a frozen ImageNet ResNet (PatchCore, RD4AD): ``backbone``, ``pretrained``, ``weights``."""

    def architecture(self) -> str:
        return self.section.backbone.split(".")[0]

    def weights_files(self) -> dict[str, Path]:
        w = self.section.weights if self.section is not None else None
        return {self.config_key("weights"): Path(w)} if w and self.section.pretrained else {}

    def check(self) -> None:
        super().check()
        import timm

        if not timm.is_model(self.architecture()):
            raise ConfigError(f"config key '{self.section_key}.backbone' = {self.section.backbone!r} is not a timm model")
        if "coreset_ratio" in self.section and not 0 < self.section.coreset_ratio <= 1:
            raise ConfigError(f"config key '{self.section_key}.coreset_ratio' must be in (0, 1], got {self.section.coreset_ratio}")
        if not self.section.pretrained:
            return
        key = self.config_key("weights")
        if self.section.download and self.section.weights and not Path(self.section.weights).expanduser().is_file():
            download_backbone(self.section.backbone, Path(self.section.weights).expanduser(), key)
        require_file(key, self.section.weights, f"the {self.section.backbone} backbone weights", BACKBONE_WHERE)

    def load_backbone(self, extractor) -> None:
        if self.section.pretrained:
            load_backbone(extractor, Path(self.section.weights).expanduser(), self.config_key("weights"))
        else:
            random_weights_warning(f"{self.name}'s backbone {self.section.backbone}", self.config_key("pretrained"))


class PatchCore(BackboneMethod):
    name, paper_name, section_name = "patchcore", "PatchCore", "anomalib_patchcore"
    frozen_prefixes = ("feature_extractor.",)

    def limits(self) -> dict:
        return {}  # one pass over the training images (anomalib's trainer_arguments: max_epochs 1)

    def build(self):
        from anomalib.models import Patchcore

        s = self.section
        module = Patchcore(backbone=self.architecture(), layers=list(s.layers), pre_trained=False,
                           coreset_sampling_ratio=s.coreset_ratio, num_neighbors=s.num_neighbors,
                           pre_processor=Patchcore.configure_pre_processor((s.image_size, s.image_size)),
                           post_processor=False, evaluator=False, visualizer=False)
        self.load_backbone(module.model.feature_extractor.feature_extractor)
        return module


class RD4AD(BackboneMethod):
    name, paper_name = "rd4ad", "RD4AD"
    frozen_prefixes = ("encoder.",)

    def check(self) -> None:
        super().check()
        if self.section.anomaly_map_mode not in ("add", "multiply"):
            raise ConfigError(f"config key '{self.section_key}.anomaly_map_mode' must be add or multiply, "
                              f"got {self.section.anomaly_map_mode!r}")

    def build(self):
        from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode

        from usad.models.anomalib.modules import OfficialReverseDistillation

        s = self.section
        module = OfficialReverseDistillation(
            lr=s.lr, betas=tuple(s.betas), backbone=self.architecture(), layers=list(s.layers), pre_trained=False,
            anomaly_map_mode=AnomalyMapGenerationMode(s.anomaly_map_mode),
            pre_processor=OfficialReverseDistillation.configure_pre_processor((s.image_size, s.image_size)),
            post_processor=False, evaluator=False, visualizer=False)
        self.load_backbone(module.model.encoder.feature_extractor)
        return module


class EfficientAD(AnomalibMethod):
    name, paper_name = "efficientad", "EfficientAD"
    validate_after = True

    def limits(self) -> dict:
        return {"max_epochs": -1, "max_steps": self.section.max_steps}

    def train_batch_size(self) -> int:
        return 1  # the paper's and anomalib's (checked in EfficientAd.on_train_start)

    def weights_files(self) -> dict[str, Path]:
        s = self.section
        return {self.config_key("teacher_weights"): Path(s.teacher_weights)} if s is not None and s.pretrained \
            and s.teacher_weights else {}

    def check(self) -> None:
        super().check()
        from anomalib.models.image.efficient_ad.lightning_model import IMAGENETTE_DOWNLOAD_INFO, WEIGHTS_DOWNLOAD_INFO

        s = self.section
        if s.model_size not in ("small", "medium"):
            raise ConfigError(f"config key '{self.section_key}.model_size' must be small or medium, got {s.model_size!r}")
        if s.max_steps < 2:  # anomalib's StepLR: step size int(0.95 * max_steps) must be >= 1
            raise ConfigError(f"config key '{self.section_key}.max_steps' must be >= 2, got {s.max_steps}")
        if s.image_size < 256:  # its encoder: five stride-2 convolutions, then an 8 x 8 one
            raise ConfigError(f"config key '{self.section_key}.image_size' = {s.image_size}: EfficientAD's autoencoder needs "
                              f">= 256")
        teacher_key, penalty_key = self.config_key("teacher_weights"), self.config_key("imagenet_dir")
        if s.download and s.pretrained and s.teacher_weights and not Path(s.teacher_weights).expanduser().is_file():
            download_anomalib_archive(WEIGHTS_DOWNLOAD_INFO, f"pretrained_teacher_{s.model_size}.pth",
                                      Path(s.teacher_weights).expanduser(), teacher_key)
        if s.download and s.imagenet_dir and not Path(s.imagenet_dir).expanduser().is_dir():
            download_anomalib_archive(IMAGENETTE_DOWNLOAD_INFO, None, Path(s.imagenet_dir).expanduser(), penalty_key)
        if s.pretrained:
            require_file(teacher_key, s.teacher_weights, f"EfficientAD-{s.model_size[0].upper()}'s pretrained teacher",
                         f"It is pretrained_teacher_{s.model_size}.pth in anomalib's efficientad_pretrained_weights.zip "
                         f"(github.com/open-edge-platform/anomalib releases, tag efficientad_pretrained_weights).")
        require_image_folder(penalty_key, s.imagenet_dir, "EfficientAD's ImageNet penalty images",
                             "The paper samples ImageNet; anomalib uses Imagenette2 (imagenette2.tgz from fast.ai).",
                             class_folders=True)

    def fit(self, split: Split) -> None:
        if not split.validation:
            raise UsadError("efficientad needs validation images (split.validation, normal images held out of "
                            "train/good) for its map quantiles; the harness holds them out")
        super().fit(split)

    def build(self):
        from usad.models.anomalib.modules import LocalEfficientAd

        s = self.section
        teacher = Path(s.teacher_weights).expanduser() if s.pretrained else None
        return LocalEfficientAd(
            teacher_path=teacher, teacher_key=self.config_key("teacher_weights"),
            imagenet_dir=Path(s.imagenet_dir).expanduser(), teacher_out_channels=s.teacher_out_channels,
            model_size=s.model_size, lr=s.lr, weight_decay=s.weight_decay, padding=s.padding, pad_maps=s.pad_maps,
            pre_processor=LocalEfficientAd.configure_pre_processor((s.image_size, s.image_size)),
            post_processor=False, evaluator=False, visualizer=False)


class DRAEM(AnomalibMethod):
    name, paper_name = "draem", "DRAEM"

    def weights_files(self) -> dict[str, Path]:
        return {}  # DTD is an image folder, not weights (its path is in the settings)

    def check(self) -> None:
        super().check()
        from anomalib.models.image.draem.lightning_model import DTD_DOWNLOAD_INFO

        s, key = self.section, self.config_key("dtd_dir")
        if s.score_pool < 1 or s.score_pool % 2 == 0:
            raise ConfigError(f"config key '{self.section_key}.score_pool' must be an odd size >= 1, got {s.score_pool}")
        if s.download and s.dtd_dir and not Path(s.dtd_dir).expanduser().is_dir():
            download_anomalib_archive(DTD_DOWNLOAD_INFO, None, Path(s.dtd_dir).expanduser(), key)
        require_image_folder(key, s.dtd_dir, "DRAEM's anomaly-source textures",
                             "The authors use the Describable Textures Dataset (DTD, dtd-r1.0.1.tar.gz from "
                             "robots.ox.ac.uk/~vgg/data/dtd).", class_folders=False)

    def build(self):
        from usad.models.anomalib.modules import OfficialDraem

        s = self.section
        return OfficialDraem(lr=s.lr, milestones=list(s.lr_milestones), gamma=s.lr_gamma, official_init=s.official_init,
                             dtd_dir=Path(s.dtd_dir).expanduser(), enable_sspcab=s.enable_sspcab, beta=tuple(s.beta),
                             pre_processor=OfficialDraem.configure_pre_processor((s.image_size, s.image_size)),
                             post_processor=False, evaluator=False, visualizer=False)

    def image_scores(self, scores: np.ndarray, maps: np.ndarray) -> np.ndarray:
        k = self.section.score_pool
        if k == 1:
            return scores
        pooled = F.avg_pool2d(torch.from_numpy(maps)[:, None], k, stride=1, padding=k // 2)  # authors' test_DRAEM.py
        return pooled.amax(dim=(1, 2, 3)).numpy()
