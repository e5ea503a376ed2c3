"""Fitting and predicting an anomalib module: Lightning's loop, no checkpoints, no logs, no test set.

``fit`` runs ``lightning.Trainer.fit`` the way anomalib's ``Engine.fit`` does (the model's
``trainer_arguments`` win over ours), but without the Engine's result folders, checkpoint callback
or per-epoch validation: with the evaluator and post-processor off, validation only feeds
EfficientAD's map quantiles, which are computed once, after training, on ``split.validation``
(``trainer.validate``, as anomalib's ``Engine.test`` does before testing). The state used to
predict is the last one; nothing is chosen on any metric.

``predict`` does what anomalib's ``predict_step`` does after the pre-processor callback
(``pre_processor.transform`` then ``model(image)``), batch by batch, in file order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer

from usad.models.anomalib.data import SplitDataModule, loader, model_resize


def trainer(device: torch.device, module, root: Path, validate: bool, **limits) -> Trainer:
    """A Lightning trainer on ``device``; ``limits``: max_epochs / max_steps from the method's config."""
    args = dict(accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=[device.index or 0] if device.type == "cuda" else 1,
                logger=False, enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(root),
                num_sanity_val_steps=0, limit_val_batches=1.0 if validate else 0, **limits)
    # anomalib's Engine: the model's own trainer arguments win (but the GPU is the one of config key `device`)
    args.update({k: v for k, v in module.trainer_arguments.items() if k != "devices"})
    return Trainer(**args)


def fit(module, datamodule: SplitDataModule, device: torch.device, validate_after: bool, **limits) -> list[float]:
    """Train ``module`` on ``datamodule.train``; with ``validate_after``, one validation pass on
    ``datamodule.val`` with the final weights (EfficientAD's quantiles). Returns the final learning rates."""
    with tempfile.TemporaryDirectory(prefix="usad-anomalib-") as root:
        fitting = trainer(device, module, Path(root), validate=False, **limits)
        fitting.fit(module, datamodule=datamodule)
        final_lr = [group["lr"] for optimizer in fitting.optimizers for group in optimizer.param_groups]
        if validate_after:
            trainer(device, module, Path(root), validate=True, **limits).validate(module, datamodule=datamodule,
                                                                                   verbose=False)
    return final_lr


@torch.no_grad()
def predict(module, files: list[Path], device: torch.device, batch_size: int, num_workers: int = 0,
            opened: list[Path] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 (N,), maps float32 (N, H, W) at the model's input size) of ``files``, in order."""
    module.to(device).eval()
    batches = loader(files, model_resize(module), batch_size, num_workers)
    scores, maps = [], []
    for batch in batches:
        image = batch.image.to(device)
        if module.pre_processor is not None and module.pre_processor.transform is not None:
            image, _ = module.pre_processor.transform(image, None)
        out = module.model(image)
        scores.append(out.pred_score.reshape(-1).float().cpu())
        maps.append(out.anomaly_map.reshape(len(image), *out.anomaly_map.shape[-2:]).float().cpu())
    if opened is not None:
        opened.extend(batches.dataset.opened)
    if not scores:
        return np.zeros(0, np.float32), np.zeros((0, 1, 1), np.float32)
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()
