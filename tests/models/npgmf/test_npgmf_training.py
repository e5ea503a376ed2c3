"""NPGMF's logical module trains end to end on a generated MVTec-LOCO-layout scene (tiny stand-ins)."""

from pathlib import Path

import numpy as np
import torch

from usad.core.config import load_config
from usad.core.data.dataset import list_images, load_rgb, train_transform
from usad.core.data.loco_synthetic import make_synthetic_loco
from usad.models.npgmf.logical import LogicalModule

REPO = Path(__file__).resolve().parents[3]
STEPS = 4


def test_logical_training_loss_goes_down(tmp_path):
    """A few Adam steps (the paper's betas, RD4AD's learning rate) on one generated scene: the Eq. 6 loss falls."""
    tiny = REPO / "tests" / "golden" / "weights" / "patchcore_resnet18.pth"  # the section's file, absolute
    cfg = load_config(REPO / "tests" / "golden.yaml", ["device=cpu", f"npgmf.logical.weights={tiny}"])
    assert cfg.npgmf.logical.betas == [0.5, 0.999] and cfg.npgmf.logical.lr == 0.005
    scenes = make_synthetic_loco(tmp_path, category="pushpins", n_train=1, n_validation=1, n_test_good=1,
                                 n_logical=1, n_structural=1, size=64, seed=0)
    torch.manual_seed(cfg.seed)
    text = torch.randn(16, generator=torch.Generator().manual_seed(0))
    module = LogicalModule(cfg.npgmf.logical, torch.device("cpu"), text)
    image = train_transform(cfg.npgmf.logical.image_size)(load_rgb(list_images(scenes / "train" / "good")[0]))[None]
    history = module.fit([image], epochs=STEPS)  # one step an epoch: the loss before each step
    assert np.all(np.isfinite(history))
    assert history[-1] < history[0] and np.mean(history[-2:]) < np.mean(history[:2]), history
