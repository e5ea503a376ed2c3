"""SimpleNet, RD++, CKAAD and ISSTAD as methods of ``usad.compare``, run from their official code.

The USAD paper ran these Table 1 baselines with "their official
implementations with recommended settings". Their code is not in this
project: ``tools/official_harness.py`` runs it, unmodified, from a clone
(config key ``<name>.authors``, default ``../shared/authors/<name>`` beside
the repository), offline, in a child process, on exactly the files the
harness of ``usad.compare`` gives:

- ``fit(split)``: their training on ``split.train`` (normal images only; their
  test folder is empty, their test-set checkpoint choices are off), in a work
  folder ``<paths.models>/<category>/official/<name>/`` that keeps their
  checkpoint;
- ``predict(files)``: their test pass on exactly ``files`` from that
  checkpoint: their image scores and anomaly maps, at their own map size;
- ``save`` / ``load``: a small JSON beside the other model files pointing at
  that work folder, with the SHA-256 of their checkpoint and the fit config
  (their checkpoints are their code's files, kept where they wrote them).

Settings: ``configs/methods/<name>.yaml`` (their recommended settings; tiny
ones for tests in ``tests/golden.yaml``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from usad.core.artifacts import atomic_write, file_sha256
from usad.core.config import REPO_ROOT, ConfigError, plain
from usad.core.errors import UsadError
from usad.models.base import Method, Split

HARNESS_FILE = REPO_ROOT / "tools" / "official_harness.py"
CLONES = REPO_ROOT.parent / "shared" / "authors"   # where ../shared/authors/<name> lives beside the repository
NOT_SETTINGS = ("authors", "backbone_weights", "random_backbone", "mae_weights", "tiny_mae", "venv")


class OfficialRunError(UsadError, RuntimeError):
    """Their code could not run (missing clone, weights, environment) or failed: the harness's message."""


class NotFittedError(UsadError, RuntimeError):
    """``predict`` or ``save`` before ``fit`` or ``load``."""


def harness():
    """``tools/official_harness.py`` as a module (a tool, not part of the package)."""
    spec = importlib.util.spec_from_file_location("official_harness", HARNESS_FILE)
    if spec is None or not HARNESS_FILE.is_file():
        raise OfficialRunError(f"{HARNESS_FILE} is missing: it runs the official code of the Table 1 baselines")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OfficialMethod(Method):
    """What the four adapters share; a subclass sets its names and the modules their code imports."""

    requirements_file = "requirements-official.txt"
    weights_key = "backbone_weights"     # the local pretrained file their code would download
    random_key = "random_backbone"       # true: seeded random weights (tests, timing)
    weights_hint = ("torchvision's wide_resnet50_2 IMAGENET1K_V1 state dict (wide_resnet50_2-95faca4d.pth from "
                    "download.pytorch.org)")

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)
        self.work: Path | None = None
        self.fit_record: dict | None = None
        self.predict_meta: dict | None = None   # their metrics and times of the last predict
        self._harness = None
        self._sha: dict[str, str] = {}

    # ------------------------------------------------------------------ settings
    def tool(self):
        if self._harness is None:
            self._harness = harness()
        return self._harness

    def clone(self) -> Path:
        """Their clone: ``<name>.authors`` (relative to the repository), else ../shared/authors/<name>."""
        given = self.section.authors
        if given:
            path = Path(given).expanduser()
            return path if path.is_absolute() else REPO_ROOT / path
        return CLONES / self.name

    def harness_settings(self) -> dict:
        """Their settings (the section without the keys that say where things are)."""
        return {k: v for k, v in plain(self.section).items() if k not in NOT_SETTINGS}

    def weights_file(self) -> Path | None:
        value = self.section[self.weights_key]
        return Path(value).expanduser() if value else None

    def weights_files(self) -> dict[str, Path]:
        path = self.weights_file()
        return {self.config_key(self.weights_key): path} if path is not None else {}

    def backbone(self) -> dict:
        path = self.weights_file()
        if path is not None:
            return {"mode": "file", "file": str(path.resolve())}
        return {"mode": "random"} if self.section[self.random_key] else {"mode": "none"}

    def device_name(self) -> str:
        return str(self.device)

    def venv(self) -> Path | None:
        return None

    def fit_config(self) -> dict:
        """Seed, section, their commit, and the SHA-256 of the weights file: any change is another fitted state."""
        shas = {}
        for key, path in self.weights_files().items():
            if path.is_file():
                self._sha.setdefault(key, file_sha256(path))
                shas[key] = self._sha[key]
        commit = self.tool().authors_commit(self.clone().resolve()) if self.clone().is_dir() else "unknown"
        return {"seed": self.cfg.seed, self.name: plain(self.section), "weights_sha256": shas,
                "authors_commit": commit}

    def settings(self) -> dict:
        return {**plain(self.section), "clone": str(self.clone()), "authors_commit": self.fit_config()["authors_commit"]}

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        if self.section is None:
            raise ConfigError(f"the config has no section {self.name!r}: configs/methods/{self.name}.yaml is missing")
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise OfficialRunError(f"{self.paper_name}'s official code needs {missing}: pip install -r "
                                   f"{self.requirements_file}")
        try:
            self.tool().check_clone(self.name, self.clone())
        except self.tool().HarnessError as e:
            raise OfficialRunError(f"config key {self.config_key('authors')!r}: {e}") from None
        path = self.weights_file()
        if path is not None and not path.is_file():
            raise OfficialRunError(f"config key {self.config_key(self.weights_key)!r}: {path} does not exist; it is "
                                   f"{self.weights_hint}")
        if path is None and not self.section[self.random_key]:
            raise OfficialRunError(f"config key {self.config_key(self.weights_key)!r} is not set: {self.paper_name} needs "
                                   f"{self.weights_hint} as a local file (no downloads during a run); "
                                   f"{self.config_key(self.random_key)}=true uses seeded random weights (tests only)")

    # ------------------------------------------------------------------ the four steps
    def run(self, step, *args, **kwargs):
        try:
            return step(*args, **kwargs)
        except self.tool().HarnessError as e:
            raise OfficialRunError(f"{self.paper_name}: {e}") from None

    def fit(self, split: Split) -> None:
        self.check()
        if not split.train:
            raise UsadError(f"{self.name}: no training images (split.train is empty)")
        work = Path(self.cfg.paths.models) / split.category / "official" / self.name
        self.fit_record = self.run(self.tool().fit, self.name, list(split.train), work, self.harness_settings(),
                                   authors=self.clone(), seed=self.cfg.seed, device=self.device_name(),
                                   backbone=self.backbone(), venv=self.venv())
        self.work = work

    def predict(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        if self.work is None:
            raise NotFittedError(f"{self.name}: predict before fit or load")
        result = self.run(self.tool().predict, self.name, [Path(f) for f in files], self.work,
                          self.harness_settings(), authors=self.clone(), seed=self.cfg.seed,
                          device=self.device_name(), backbone=self.backbone(), venv=self.venv())
        self.predict_meta = result["meta"]
        return result["score"].astype(np.float32), result["map"].astype(np.float32)

    # ------------------------------------------------------------------ fitted state
    def pointer_file(self, folder: Path) -> Path:
        return Path(folder) / f"{self.name}.official.json"

    def save(self, folder: Path) -> None:
        if self.work is None or self.fit_record is None:
            raise NotFittedError(f"{self.name}: nothing fitted to save")
        payload = {"work": str(Path(self.work).resolve()), "fit_config": self.fit_config(),
                   "checkpoint": self.fit_record["checkpoint"],
                   "checkpoint_sha256": self.fit_record["checkpoint_sha256"]}
        atomic_write(self.pointer_file(folder), lambda tmp: tmp.write_text(json.dumps(payload, indent=2) + "\n"))

    def load(self, folder: Path) -> bool:
        """The work folder of an earlier fit with the same fit config and an unchanged checkpoint, else False."""
        path = self.pointer_file(folder)
        if not path.is_file():
            return False
        try:
            payload = json.loads(path.read_text())
            work = Path(payload["work"])
            record = json.loads((work / "fit.json").read_text())
        except (OSError, ValueError, KeyError):
            return False
        if payload.get("fit_config") != json.loads(json.dumps(self.fit_config())):
            return False
        ckpt = work / record["checkpoint"]
        if not ckpt.is_file() or file_sha256(ckpt) != payload["checkpoint_sha256"]:
            return False
        self.work, self.fit_record = work, record
        return True


class SimpleNet(OfficialMethod):
    name = "simplenet"
    paper_name = "SimpleNet"
    requires = ("click", "tensorboard", "pandas", "skimage", "matplotlib")


class RDPlusPlus(OfficialMethod):
    name = "rdpp"
    paper_name = "RD++"
    requires = ("geomloss", "numba", "fastprogress", "pandas", "skimage", "matplotlib")

    def backbone(self) -> dict:
        if self.section.tiny_networks:   # their networks shrunk, seeded random: no weights file is read
            return {"mode": "random"}
        return super().backbone()

    def check(self) -> None:
        if self.section is not None and self.section.tiny_networks and not self.section.random_backbone:
            raise ConfigError(f"config key {self.config_key('tiny_networks')!r} needs {self.config_key('random_backbone')}=true: "
                              f"the shrunk networks have no pretrained weights")
        super().check()


class CKAAD(OfficialMethod):
    name = "ckaad"
    paper_name = "CKAAD"
    requires = ("pandas", "skimage")


class ISSTAD(OfficialMethod):
    name = "isstad"
    paper_name = "ISSTAD"
    weights_key = "mae_weights"
    random_key = "tiny_mae"
    weights_hint = ("the MAE checkpoint mae_visualize_vit_large.pth (dl.fbaipublicfiles.com/mae/visualize/), "
                    "their step-1 start")

    def venv(self) -> Path | None:
        value = self.section.venv
        return Path(value).expanduser() if value else None

    def check(self) -> None:
        super().check()
        try:
            self.tool().check_isstad_env(self.venv())
        except self.tool().HarnessError as e:
            raise OfficialRunError(f"config key {self.config_key('venv')!r}: {e}") from None
