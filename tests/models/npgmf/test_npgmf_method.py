"""NPGMF end to end on generated MVTec-LOCO-layout scenes with the tiny stand-ins of tests/golden.yaml (section npgmf).

Fit -> predict -> save -> load -> predict gives the same
outputs; the three ablation rows run; bad input is one UsadError (exit status 2 through run_cli).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from usad.core.cli import run_cli
from usad.core.config import ConfigError, load_config
from usad.core.data.dataset import list_images
from usad.core.data.loco_synthetic import make_synthetic_loco
from usad.core.errors import UsadError
from usad.models.base import Split
from usad.models.npgmf.fusion import smooth_and_score
from usad.models.npgmf.method import MODEL_FILES, NPGMF, NPGMFError
from usad.models.npgmf.prior import PriorError, write_embedding_file

REPO = Path(__file__).resolve().parents[3]
GOLDEN_CONFIG = REPO / "tests" / "golden.yaml"
TINY_RESNET = REPO / "tests" / "golden" / "weights" / "patchcore_resnet18.pth"  # the section's file, absolute
CATEGORY = "pushpins"
TEXT_DIM = 16


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("npgmf_loco")
    return make_synthetic_loco(root, category=CATEGORY, n_train=2, n_validation=1, n_test_good=1, n_logical=1,
                               n_structural=1, size=64, seed=0)


@pytest.fixture(scope="module")
def embedding_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npgmf_text") / "text.safetensors"
    vector = torch.randn(TEXT_DIM, generator=torch.Generator().manual_seed(0))
    write_embedding_file(path, {CATEGORY: vector}, {"clip_model": "seeded random (test)"})
    return path


def config(*overrides: str, embedding: Path | None = None, category: str = CATEGORY):
    sets = [f"data.category={category}", "device=cpu", "data.num_workers=0", "data.batch_size=4",
            f"npgmf.logical.weights={TINY_RESNET}", f"npgmf.structural.weights={TINY_RESNET}"]
    if embedding is not None:
        sets.append(f"npgmf.text_embedding={embedding}")
    return load_config(GOLDEN_CONFIG, sets + list(overrides))


def split_of(folder: Path, validation: bool = True) -> Split:
    return Split(folder, folder.name, "loco", list_images(folder / "train" / "good"),
                 list_images(folder / "validation" / "good") if validation else [])


def scored_files(scenes: Path) -> list[Path]:
    return list_images(scenes / "test")


@pytest.fixture(scope="module")
def fitted(scenes, embedding_file, tmp_path_factory):
    method = NPGMF(config(embedding=embedding_file), torch.device("cpu"))
    method.check()
    method.fit(split_of(scenes))
    folder = tmp_path_factory.mktemp("npgmf_model")
    method.save(folder)
    return method, folder


def test_fit_predict_save_load(fitted, scenes):
    method, folder = fitted
    files = scored_files(scenes)
    scores, maps = method.predict(files)
    assert scores.dtype == np.float32 and maps.dtype == np.float32
    assert scores.shape == (len(files),) and maps.shape == (len(files), 64, 64)
    assert np.all(np.isfinite(maps)) and np.allclose(scores, maps.reshape(len(files), -1).max(1))
    assert {p.name for p in folder.iterdir()} == set(MODEL_FILES.values())
    again = NPGMF(method.cfg, torch.device("cpu"))
    assert again.load(folder)
    scores2, maps2 = again.predict(files)
    np.testing.assert_array_equal(scores, scores2)
    np.testing.assert_array_equal(maps, maps2)


def test_validation_maps_are_z_normalised(fitted, scenes):
    """Eq. 11: on the validation images, each branch's normalised map has mean 0 and std 1."""
    method, _ = fitted
    files = list_images(scenes / "validation" / "good")
    for branch in ("logical", "structural"):
        raw = torch.cat([m[branch] for m in method.raw_maps(files, (branch,))]).double()
        z = (raw - method.stats[branch][0]) / method.stats[branch][1]
        assert float(z.mean()) == pytest.approx(0.0, abs=1e-6)
        assert float(z.std(unbiased=False)) == pytest.approx(1.0, rel=1e-6)


def test_ablation_rows_reuse_the_fitted_branches(fitted, scenes):
    """--set npgmf.branches=logical|structural: each row loads its branch file and scores with it alone."""
    method, folder = fitted
    files = scored_files(scenes)
    raw = next(method.raw_maps(files, ("logical", "structural")))
    for branch in ("logical", "structural"):
        row = NPGMF(config(f"npgmf.branches={branch}", embedding=method.section.text_embedding), torch.device("cpu"))
        assert row.load(folder)
        scores, maps = row.predict(files)
        expect, _ = smooth_and_score((raw[branch] - row.stats[branch][0]) / row.stats[branch][1], 4.0)
        np.testing.assert_allclose(scores, expect.numpy(), rtol=1e-5)


def test_a_changed_config_is_refitted_not_loaded(fitted):
    method, folder = fitted
    other = NPGMF(config("npgmf.logical.lr=0.001", embedding=method.section.text_embedding), torch.device("cpu"))
    assert not other.load(folder)


# ---------------------------------------------------------------- bad input: one UsadError, exit status 2
def exit_status(fn) -> int:
    def main(argv=None):
        fn()
        return 0
    return run_cli(main, [])


def test_missing_clip_checkpoint_without_a_stored_embedding():
    method = NPGMF(config(), torch.device("cpu"))
    with pytest.raises(PriorError, match="npgmf.clip.weights.*npgmf.text_embedding"):
        method.check()
    assert exit_status(method.check) == 2
    missing = NPGMF(config("npgmf.clip.weights=/nonexistent/clip.safetensors"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="npgmf.clip.weights"):
        missing.check()


def test_a_category_the_model_was_not_trained_for(fitted, embedding_file):
    _, folder = fitted
    other = NPGMF(config(embedding=embedding_file, category="breakfast_box"), torch.device("cpu"))
    with pytest.raises(PriorError, match="no embedding for category 'breakfast_box'"):
        other.check()  # the embedding file knows only pushpins
    with pytest.raises(NPGMFError, match="trained for category 'pushpins', not for 'breakfast_box'"):
        other.load(folder)
    assert exit_status(lambda: other.load(folder)) == 2


def test_missing_validation_images(scenes, embedding_file):
    method = NPGMF(config(embedding=embedding_file), torch.device("cpu"))
    with pytest.raises(NPGMFError, match="validation"):
        method.fit(split_of(scenes, validation=False))
    assert exit_status(lambda: method.fit(split_of(scenes, validation=False))) == 2


def test_bad_branches_value():
    method = NPGMF(config("npgmf.branches=fused"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="npgmf.branches"):
        method.check()
    assert isinstance(ConfigError("x"), UsadError)
