"""Shared fixtures: the golden fixtures and configs pointing at them.

Two golden fixtures (the authors' outputs on a fixed input, tests/golden/README.md):
- ``repo``: tests/golden, committed, compact; always there, never skipped;
- ``shared``: ../shared/golden (or $USAD_GOLDEN), larger; skipped where absent (a failure under CI=1).
"""

import hashlib
import os
from pathlib import Path

import pytest

from usad.core.config import load_config

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("USAD_GOLDEN", REPO.parent / "shared" / "golden"))  # the shared fixture
GOLDEN_FIXTURES = {"repo": REPO / "tests" / "golden", "shared": GOLDEN}
GOLDEN_CONFIG = REPO / "tests" / "golden.yaml"

# Tiny random ViTs with the golden checkpoints' shapes (no weights needed).
TINY_VIT_S = {"depth": 2, "embed_dim": 16, "num_heads": 2, "init_values": 1.0}
TINY_VIT_B = {"depth": 2, "embed_dim": 24, "num_heads": 2, "init_values": 1.0}

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying the hub for 30 s


def require_golden(fixture: str = "repo") -> Path:
    """The folder of golden fixture ``repo`` (tests/golden) or ``shared`` (../shared/golden)."""
    path = GOLDEN_FIXTURES[fixture]
    if not (path / "reference.npz").is_file():
        if fixture == "repo":
            pytest.fail(f"the committed golden fixture is missing at {path}: restore tests/golden from git")
        if os.environ.get("CI"):
            pytest.fail(f"golden fixture missing at {path}: CI must have ../shared beside the checkout")
        pytest.skip(f"golden fixture not found at {path}")
    return path


def golden_overrides(tmp_path: Path, fixture: str = "repo") -> list[str]:
    """``--set`` values putting the golden data/weights under paper defaults, outputs under tmp_path."""
    g = require_golden(fixture)
    return [
        f"data.root={g}", "data.category=data",
        f"maclu.weights={g / 'weights' / 'maclu_vit_tiny.pth'}",
        f"ma2patch.weights={g / 'weights' / 'ma2patch_vit_tiny.pth'}",
        f"patchcore.weights={g / 'weights' / 'patchcore_resnet18.pth'}",
        f"paths.models={tmp_path / 'models'}", f"paths.results={tmp_path / 'results'}",
        f"device={os.environ.get('USAD_TEST_DEVICE', 'cpu')}",  # e.g. USAD_TEST_DEVICE=cuda (benchmarks/gpu.sh)
    ]


def golden_config(tmp_path: Path, *overrides: str, fixture: str = "repo"):
    return load_config(GOLDEN_CONFIG, golden_overrides(tmp_path, fixture) + list(overrides))


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


def config_argv(cfg, folder: Path) -> list[str]:
    """The CLI form of a config: ``--config FILE``, the whole of it written to a new YAML file in ``folder``."""
    import yaml

    path = folder / f"config_{len(list(folder.glob('config_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return ["--config", str(path)]


def golden_argv(tmp_path: Path, fixture: str = "repo") -> list[str]:
    argv = ["--config", str(GOLDEN_CONFIG)]
    for o in golden_overrides(tmp_path, fixture):
        argv += ["--set", o]
    return argv


def run_golden(fixture: str, tmp: Path) -> dict:
    """The three training scripts and test_fusion.py (with --ablation) on golden fixture ``fixture``."""
    import numpy as np

    import test_fusion
    import train_ma2patch
    import train_ma_clu
    import train_pc

    golden = require_golden(fixture)
    argv = golden_argv(tmp, fixture)
    for script in (train_ma_clu, train_ma2patch, train_pc):
        script.main(argv)
    out = tmp / "predictions.npz"
    result = test_fusion.main(argv + ["--save-predictions", str(out), "--heatmaps", "2", "--ablation"])
    return {"ref": np.load(golden / "reference.npz"), "ours": np.load(out), "metrics": result, "tmp": tmp,
            "argv": argv, "config": golden_config(tmp, fixture=fixture), "fixture": fixture, "golden": golden}


@pytest.fixture(scope="session")
def golden_runs(tmp_path_factory):
    """``golden_runs(fixture)``: the golden run on that fixture, made once per session."""
    done = {}

    def get(fixture: str) -> dict:
        if fixture not in done:
            require_golden(fixture)  # skip (or fail) before any work
            done[fixture] = run_golden(fixture, tmp_path_factory.mktemp(f"golden_{fixture}"))
        return done[fixture]

    return get


@pytest.fixture(scope="session")
def golden_run(golden_runs):
    """The golden run on the committed fixture (tests/golden): every clone has it."""
    return golden_runs("repo")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path: compare before and after to see that nothing changed."""
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}
