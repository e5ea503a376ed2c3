"""The one interface every method of ``usad.compare`` implements (Table 1 and the seed systems).

A method is a small adapter: it is built from the whole config and a device,
checks its inputs before any compute, fits on normal images, and predicts an
image score and an anomaly map per image. Everything else (which images,
resizing the maps to the evaluation size, the metrics, timing, resuming, the
tables, Ray) is the harness's (``usad.experiments.compare``), the same for
every method, so that adding a method touches nothing but its own folder, its
``configs/methods/<name>.yaml`` and one line of ``usad.models.METHODS``.

Contract:
- ``check()`` raises a ``UsadError`` naming the config key of anything missing
  (a weights file, an optional package, a category without prompts) before any
  training starts; nothing may fall back to random weights or download.
- ``fit(split)`` sees normal images only: ``split.train`` and
  ``split.validation`` (``validation/good`` on MVTec LOCO, else a held-out
  share of ``train/good``). Never the test set; no checkpoint is chosen on test
  metrics.
- ``predict(files)`` returns ``(scores, maps)``: ``scores`` float32 of shape
  (N,), higher = more anomalous; ``maps`` float32 of shape (N, H, W) at any
  size (the harness resizes them bilinearly to ``data.eval_size``).
- ``save(folder)`` / ``load(folder)`` keep the fitted state in the project's
  safe format (tensors only, ``usad.core.artifacts``), so a finished method is
  not refitted. Methods run by an external harness may keep nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from usad.core.config import plain


@dataclass
class Split:
    """What a method may see when fitting: normal images only."""

    root: Path                     # the category folder
    category: str                  # its name (CLIP prompts, per-category settings)
    layout: str                    # "mvtec" (CoalAD, MVTec AD) or "loco" (MVTec LOCO AD)
    train: list[Path] = field(default_factory=list)
    validation: list[Path] = field(default_factory=list)


class Method:
    """Base class: subclasses set ``name`` (the registry key and config section) and implement the four steps."""

    name: str = ""                 # e.g. "efficientad": configs/methods/efficientad.yaml, cfg.efficientad
    section_name: str = ""         # its config section when not ``name`` (anomalib's "patchcore" ->
                                   # "anomalib_patchcore": USAD's own branch holds the section "patchcore")
    paper_name: str = ""           # its row in the paper's Table 1, e.g. "EfficientAD"
    requires: tuple[str, ...] = ()  # importable modules from an optional requirements file, e.g. ("anomalib",)
    requirements_file: str = ""    # where those are pinned, e.g. "requirements-baselines.txt"

    def __init__(self, cfg, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.section_key = self.section_name or self.name
        self.section = cfg[self.section_key] if self.section_key in cfg else None

    # ---------------------------------------------------------------- the four steps
    def check(self) -> None:
        """Everything that can be checked before compute (weights files, packages); raise a UsadError."""

    def fit(self, split: Split) -> None:
        raise NotImplementedError

    def predict(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        """Keep the fitted state in ``folder`` (default: nothing to keep)."""

    def load(self, folder: Path) -> bool:
        """Restore a fitted state saved by ``save`` with the same ``fit_config``; False when there is none."""
        return False

    def config_key(self, key: str) -> str:
        """The dotted config key of one of this method's settings, for messages: ``efficientad.teacher_weights``."""
        return f"{self.section_key}.{key}"

    # ---------------------------------------------------------------- what the harness records
    def fit_config(self) -> dict:
        """The values a fitted state depends on: the method's section and the seed (resume and model files)."""
        return {"seed": self.cfg.seed, self.section_key: plain(self.section) if self.section is not None else None}

    def weights_files(self) -> dict[str, Path]:
        """Local weights files this run reads, by config key (their SHA-256 goes into table1.json)."""
        return {}

    @classmethod
    def paper_numbers(cls, cfg, category: str, layout: str) -> dict | None:
        """The method's own paper's numbers (in %, by this project's metric names) for ``category``, to print beside
        this run; None where its paper has none. The USAD paper's Table 1 (CoalAD) is the harness's."""
        return None

    def settings(self) -> dict:
        """The settings used, for table1.json (default: the method's config section)."""
        return plain(self.section) if self.section is not None else {}
