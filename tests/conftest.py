"""Shared fixtures: the golden fixture in ../shared/golden and configs pointing at it."""

import hashlib
import os
from pathlib import Path

import pytest

from usad.config import load_config

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("USAD_GOLDEN", REPO.parent / "shared" / "golden"))
GOLDEN_CONFIG = REPO / "tests" / "golden.yaml"

# Tiny random ViTs with the golden checkpoints' shapes (no weights needed).
TINY_VIT_S = {"depth": 2, "embed_dim": 16, "num_heads": 2, "init_values": 1.0}
TINY_VIT_B = {"depth": 2, "embed_dim": 24, "num_heads": 2, "init_values": 1.0}

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying the hub for 30 s


def require_golden() -> Path:
    if not (GOLDEN / "reference.npz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"golden fixture missing at {GOLDEN}: CI must have ../shared beside the checkout")
        pytest.skip(f"golden fixture not found at {GOLDEN}")
    return GOLDEN


def golden_overrides(tmp_path: Path) -> list[str]:
    """``--set`` values putting the golden data/weights under paper defaults, outputs under tmp_path."""
    g = require_golden()
    return [
        f"data.root={g}", "data.category=data",
        f"maclu.weights={g / 'weights' / 'maclu_vit_tiny.pth'}",
        f"ma2patch.weights={g / 'weights' / 'ma2patch_vit_tiny.pth'}",
        f"patchcore.weights={g / 'weights' / 'patchcore_resnet18.pth'}",
        f"paths.models={tmp_path / 'models'}", f"paths.results={tmp_path / 'results'}",
        "device=cpu",
    ]


def golden_config(tmp_path: Path, *overrides: str):
    return load_config(GOLDEN_CONFIG, golden_overrides(tmp_path) + list(overrides))


def tiny_config(tmp_path: Path, data_root: Path, category: str = "coal_ad", *overrides: str):
    """Random tiny backbones on a generated dataset (smoke runs; a warning is logged)."""
    return load_config(None, [
        f"data.root={data_root}", f"data.category={category}", "data.download=false", "data.num_workers=0",
        "maclu.pretrained=false", f"maclu.model_kwargs={TINY_VIT_S}",
        "ma2patch.pretrained=false", f"ma2patch.model_kwargs={TINY_VIT_B}",
        "patchcore.pretrained=false", "patchcore.backbone=resnet18",
        f"paths.models={tmp_path / 'models'}", f"paths.results={tmp_path / 'results'}",
        "device=cpu", *overrides,
    ])


def golden_argv(tmp_path: Path) -> list[str]:
    argv = ["--config", str(GOLDEN_CONFIG)]
    for o in golden_overrides(tmp_path):
        argv += ["--set", o]
    return argv


@pytest.fixture(scope="session")
def golden_run(tmp_path_factory):
    """The three training scripts and test_fusion.py (with --ablation) on the golden fixture, once."""
    import numpy as np

    import test_fusion
    import train_ma2patch
    import train_ma_clu
    import train_pc

    golden = require_golden()
    tmp = tmp_path_factory.mktemp("golden")
    argv = golden_argv(tmp)
    for script in (train_ma_clu, train_ma2patch, train_pc):
        script.main(argv)
    out = tmp / "predictions.npz"
    result = test_fusion.main(argv + ["--save-predictions", str(out), "--heatmaps", "2", "--ablation"])
    return {"ref": np.load(golden / "reference.npz"), "ours": np.load(out), "metrics": result, "tmp": tmp,
            "argv": argv, "config": golden_config(tmp)}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path: compare before and after to see that nothing changed."""
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}
