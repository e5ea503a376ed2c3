"""Shared set-up of the official-code baselines' tests: their clones, a small generated CoalAD set, configs.

The clones live in ../shared/authors/<name> (or ``<name>.authors``); where one is absent its tests are
skipped, except under CI=1, where they fail (CI must have ../shared beside the checkout). The same for the
packages of requirements-official.txt and ISSTAD's venv (timm 0.3.2), which the tests make once if missing.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from usad.core.config import REPO_ROOT, load_config
from usad.core.data.synthetic import make_synthetic_coalad
from usad.models import method_class
from usad.models.base import Split

CLONES = REPO_ROOT.parent / "shared" / "authors"
GOLDEN_YAML = REPO_ROOT / "tests" / "golden.yaml"


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI=1: the official-code baselines must run)")
    pytest.skip(reason)


def require_method(name: str):
    """The adapter class of ``name``, its clone and packages there (else skip / fail under CI)."""
    cls = method_class(name)
    if not (CLONES / name).is_dir():
        unavailable(f"clone of {cls.paper_name}'s official code not found at {CLONES / name}")
    missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
    if missing:
        unavailable(f"{missing} missing: pip install -r requirements-official.txt")
    if name == "isstad":
        from official_harness import HarnessError, make_isstad_env

        try:
            make_isstad_env()  # once per machine: a venv with timm 0.3.2 (needs the package index the first time)
        except HarnessError as e:
            unavailable(f"ISSTAD's venv could not be made: {e}")
    return cls


@pytest.fixture(scope="session")
def coal_data(tmp_path_factory) -> Path:
    """4 training and 6 test scenes (3 normal, 3 with a foreign object), 64 px."""
    root = tmp_path_factory.mktemp("official_data")
    return make_synthetic_coalad(root, n_train=4, n_test_good=3, n_test_anomalous=3, size=64, seed=3)


def official_config(tmp_path: Path, data: Path, *overrides: str):
    """tests/golden.yaml (the tiny settings) on ``data``, model files under tmp_path, CPU."""
    return load_config(GOLDEN_YAML, [f"data.root={data.parent}", f"data.category={data.name}", "data.download=false",
                                     f"paths.models={tmp_path / 'models'}", f"paths.results={tmp_path / 'results'}",
                                     "device=cpu", *overrides])


def split_of(data: Path) -> Split:
    return Split(root=data, category=data.name, layout="mvtec", train=sorted((data / "train" / "good").glob("*.png")))


def test_files(data: Path) -> list[Path]:
    return sorted((data / "test").glob("*/*.png"))


def labels_of(files) -> list[int]:
    return [int(Path(f).parent.name != "good") for f in files]


def build(name: str, cfg):
    return method_class(name)(cfg, torch.device("cpu"))


class Official:
    """What every official-method test does: fit on the generated set, predict exactly our test files."""

    def __init__(self, data: Path):
        self.data = data

    require = staticmethod(require_method)

    def files(self) -> list[Path]:
        return test_files(self.data)

    def config(self, tmp_path: Path, *overrides: str):
        return official_config(tmp_path, self.data, *overrides)

    def fitted(self, name: str, tmp_path: Path, *overrides: str):
        require_method(name)
        method = build(name, self.config(tmp_path, *overrides))
        method.fit(split_of(self.data))
        return method

    def check_outputs(self, method, files, scores, maps) -> None:
        """Shapes, finite values, and our image AUROC on them equal to the one their code computed."""
        import numpy as np

        from usad.core.metrics import image_auroc

        assert scores.dtype == np.float32 and scores.shape == (len(files),)
        assert maps.dtype == np.float32 and maps.ndim == 3 and maps.shape[0] == len(files)
        assert np.isfinite(scores).all() and np.isfinite(maps).all()
        assert maps.std() > 0, "constant maps"
        theirs = method.predict_meta["their_metrics"]["image_auroc"]
        assert abs(image_auroc(labels_of(files), scores) - theirs) < 1e-6, (theirs, scores)

    def check_order(self, method, files, scores, maps, exact: bool = True) -> None:
        """A second pass on a reordered subset returns the same values for the same files (``exact``), or,
        where their test pass is random (ISSTAD), values nearer to the same file's than to any other file's."""
        import numpy as np

        pick = [4, 0, 3, 5]  # normal and anomalous, reordered
        s2, m2 = method.predict([files[i] for i in pick])
        assert s2.shape == (len(pick),) and m2.shape == (len(pick), *maps.shape[1:])
        if exact:
            np.testing.assert_allclose(s2, scores[pick], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(m2, maps[pick], rtol=1e-5, atol=1e-6)
            return
        map_dist = ((m2[:, None] - maps[None]) ** 2).reshape(len(pick), len(files), -1).mean(-1)
        assert list(map_dist.argmin(1)) == pick, map_dist
        score_dist = np.abs(s2[:, None] - scores[None])
        assert list(score_dist.argmin(1)) == pick, score_dist
        np.testing.assert_allclose(s2, scores[pick], rtol=1e-2)


@pytest.fixture
def official(coal_data):
    return Official(coal_data)
