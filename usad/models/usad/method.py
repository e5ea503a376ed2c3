"""USAD as a method of ``usad.compare``: the three branches and their fusion behind ``usad.models.base.Method``.

It reuses ``usad.run``'s model files (``<paths.models>/<category>/{maclu,ma2patch,patchcore}.pt``):
``load`` takes them when all three are valid for this config, so ``usad.compare --methods usad`` after
``usad.run`` (or the training scripts) retrains nothing; ``fit`` refits the three branches and writes
those files, as ``usad.run --retrain`` does. Images are those of ``usad.run``: every image of train/good
but the ``data.holdout_ratio`` share (the paper's training set by default); USAD needs no validation set, so
the harness's validation share of train/good is fitted on too. ``predict`` is ``usad.run``'s evaluation
(same transforms, batches, fusion): scores ``s_fused`` and maps ``M_fused`` at ``data.eval_size``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from usad.core.artifacts import ArtifactError
from usad.core.backbones import BackboneWeightsError, check_backbone
from usad.core.config import plain
from usad.core.data.dataset import Sample, TestDataset, make_loader
from usad.models.base import Method, Split
from usad.models.usad.branches import BRANCHES, expected_fit_config, load_branches, trained_branch
from usad.models.usad.inference import branch_features, check_finite, outputs_from_features

log = logging.getLogger("usad")

FUSION_SECTIONS = ("fusion",)   # what acts on the fitted branches' outputs at test time


class USAD(Method):
    name = "usad"
    paper_name = "USAD (fused)"

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)
        self.branches: dict | None = None

    def check(self) -> None:
        """Each branch's backbone settings and its local weights file (``<branch>.weights``)."""
        for b in BRANCHES:
            check_backbone(self.cfg[b], b)
            weights = self.cfg[b].weights
            if weights and not Path(weights).expanduser().is_file():
                raise BackboneWeightsError(f"{b}.weights = {weights!r} does not exist; give the path of a local "
                                           f"checkpoint file")

    def fit(self, split: Split) -> None:
        if split.validation:
            log.info("usad: fits on train/good as usad.run does (the %d validation images included: USAD uses "
                     "no validation set)", len(split.validation))
        self.branches = {b: trained_branch(b, self.cfg, self.device, retrain=True, check=False)[0] for b in BRANCHES}

    def load(self, folder: Path) -> bool:
        """The three model files of ``usad.run`` (``folder`` is not used), when all are valid for this config."""
        try:
            self.branches = load_branches(self.cfg, self.device)
        except ArtifactError as e:
            log.info("usad: no valid model files to reuse (%s)", str(e).splitlines()[0])
            return False
        return True

    def predict(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """``usad.run``'s evaluation of ``files``: the fused score and the fused map at ``data.eval_size``."""
        cfg = self.cfg
        root = Path(files[0]).parent if files else Path(".")
        dataset = TestDataset(root, cfg.data.eval_size, [Sample(Path(p), 0, "", None) for p in files])
        scores = np.empty(len(files), np.float32)
        maps = np.empty((len(files), cfg.data.eval_size, cfg.data.eval_size), np.float32)
        loader = make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers, self.device)
        for batch in tqdm(loader, desc="usad predict", unit="batch"):
            idx = batch["index"].numpy()
            feats = branch_features(self.branches, batch["image"].to(self.device, non_blocking=True))
            out = outputs_from_features(self.branches, feats, cfg.data.eval_size, cfg)
            check_finite(out, [str(files[i]) for i in idx])
            scores[idx] = out["s_fused"].float().cpu().numpy()
            maps[idx] = out["m_fused"].float().cpu().numpy()
        return scores, maps

    def fit_config(self) -> dict:
        """What the three model files record (see ``usad.core.artifacts``)."""
        return {b: expected_fit_config(b, self.cfg) for b in BRANCHES}

    def settings(self) -> dict:
        """The three branch sections, the fusion, the precision and the holdout (``data.holdout_ratio``)."""
        return {**{s: plain(self.cfg[s]) for s in (*BRANCHES, *FUSION_SECTIONS)},
                "precision": self.cfg.precision, "data.holdout_ratio": self.cfg.data.holdout_ratio,
                "seed": self.cfg.seed}

    def weights_files(self) -> dict[str, Path]:
        return {f"{b}.weights": Path(self.cfg[b].weights) for b in BRANCHES if self.cfg[b].weights}
