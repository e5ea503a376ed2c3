"""Shared helpers of the anomalib baseline tests: generated scenes, a split, one fit per method, anomalib's metrics.

anomalib is an optional group (requirements-baselines.txt): every test module calls ``require_anomalib()``
at import, which skips it with the reason when the package is missing.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GOLDEN_CONFIG, REPO
from usad.core.config import load_config
from usad.core.data.dataset import TestDataset, holdout_split, test_samples, train_samples
from usad.core.data.synthetic import make_synthetic_coalad
from usad.models import method_class
from usad.models.base import Split

SKIP_REASON = "anomalib is not installed (optional baselines group: pip install -r requirements-baselines.txt)"
GOLDEN_DATA = REPO / "tests" / "golden" / "data"
TINY_WEIGHTS = REPO / "tests" / "golden" / "weights" / "patchcore_resnet18.pth"


def require_anomalib() -> None:
    pytest.importorskip("anomalib", reason=SKIP_REASON)


def make_scenes(root: Path, n_train: int = 6, n_good: int = 1, n_bad: int = 2) -> Path:
    """A small generated CoalAD (128 x 128 scenes) at ``root/coal_ad``."""
    return make_synthetic_coalad(root, n_train=n_train, n_test_good=n_good, n_test_anomalous=n_bad, size=128, seed=3)


def split_of(category_dir: Path, n_validation: int = 1) -> Split:
    """train/good as train + validation (the last ``n_validation`` of a seeded pick), as the harness holds them out."""
    samples = train_samples(category_dir)
    fitted, held = holdout_split(samples, n_validation / len(samples), seed=0)
    return Split(root=category_dir, category=category_dir.name, layout="mvtec",
                 train=[s.path for s in fitted], validation=[s.path for s in held])


def files_of_test_set(category_dir: Path) -> list[Path]:
    return [s.path for s in test_samples(category_dir)]


def tiny_config(*overrides: str):
    """tests/golden.yaml (the tiny settings of every method), with absolute paths to the golden files."""
    return load_config(GOLDEN_CONFIG, [
        f"anomalib_patchcore.weights={TINY_WEIGHTS}", f"rd4ad.weights={TINY_WEIGHTS}",
        f"efficientad.imagenet_dir={GOLDEN_DATA / 'train'}", f"draem.dtd_dir={GOLDEN_DATA / 'train' / 'good'}",
        "device=cpu", *overrides])


def build(name: str, *overrides: str):
    """Adapter ``name`` with the tiny settings of tests/golden.yaml."""
    return method_class(name)(tiny_config(*overrides), torch.device("cpu"))


def bare(name: str, *overrides: str):
    """Adapter ``name`` with the defaults of configs/methods (the paper's settings, no weights files given)."""
    return method_class(name)(load_config(None, ["device=cpu", *overrides]), torch.device("cpu"))


@contextmanager
def hidden_test_set(category_dir: Path):
    """test/ and ground_truth/ moved out of the dataset while the block runs: nothing in it can read them."""
    hidden = category_dir.parent / f".hidden-{category_dir.name}"
    hidden.mkdir()
    for part in ("test", "ground_truth"):
        shutil.move(str(category_dir / part), str(hidden / part))
    try:
        yield
    finally:
        for part in ("test", "ground_truth"):
            shutil.move(str(hidden / part), str(category_dir / part))
        hidden.rmdir()


def fitted_run(name: str, root: Path, *overrides: str, n_validation: int = 1, **scene_counts) -> dict:
    """Fit ``name`` on generated scenes with the test set out of reach, then predict the test set."""
    category_dir = make_scenes(root, **scene_counts)
    split = split_of(category_dir, n_validation)
    method = build(name, *overrides)
    with hidden_test_set(category_dir):
        method.fit(split)
    files = files_of_test_set(category_dir)
    scores, maps = method.predict(files)
    return {"method": method, "split": split, "files": files, "scores": scores, "maps": maps,
            "category_dir": category_dir, "overrides": overrides}


def masks_and_labels(category_dir: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth masks (bool, at ``size``) and labels of the test set, read by the project's dataset."""
    ds = TestDataset(category_dir, size)
    masks = np.stack([ds.load_mask(s).numpy() > 0.5 for s in ds.samples])
    return masks, np.array([s.label for s in ds.samples])


def anomalib_aurocs(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """anomalib's own image and pixel AUROC (``anomalib.metrics.AUROC``, as its default evaluator builds them)."""
    from anomalib.data import ImageBatch
    from anomalib.metrics import AUROC

    n, h, w = maps.shape
    batch = ImageBatch(image=torch.zeros(n, 3, h, w), gt_label=torch.from_numpy(labels), pred_score=torch.from_numpy(scores),
                       anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks))
    image = AUROC(fields=["pred_score", "gt_label"], prefix="image_")
    pixel = AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)
    image.update(batch)
    pixel.update(batch)
    return float(image.compute()), float(pixel.compute())


def check_common(run: dict, image_size: int, tmp_path: Path) -> None:
    """What every adapter must do: shapes and dtypes, fit read train/validation files only, save/load gives the
    same predictions, and our image/pixel AUROC equal anomalib's on its predictions."""
    from usad.core.metrics import image_auroc, pixel_auroc

    scores, maps, files, method, split = run["scores"], run["maps"], run["files"], run["method"], run["split"]
    assert scores.dtype == np.float32 and scores.shape == (len(files),) and np.isfinite(scores).all()
    assert maps.dtype == np.float32 and maps.shape == (len(files), image_size, image_size) and np.isfinite(maps).all()
    # fitting opened only split.train / split.validation files; predicting opened exactly the test files, in order
    opened = set(method.opened["fit"])
    assert opened and opened <= set(split.train) | set(split.validation)
    assert not opened & set(files)
    assert method.opened["predict"] == files
    # save / load: the same predictions from a fresh adapter
    method.save(tmp_path / "models")
    again = build(method.name, *run["overrides"])
    assert again.load(tmp_path / "models")
    scores2, maps2 = again.predict(files)
    np.testing.assert_array_equal(scores2, scores)
    np.testing.assert_array_equal(maps2, maps)
    # metrics: ours == anomalib's own, on the same scores and maps
    masks, labels = masks_and_labels(run["category_dir"], image_size)
    theirs_image, theirs_pixel = anomalib_aurocs(labels, scores, masks, maps)
    assert abs(image_auroc(labels, scores) - theirs_image) < 1e-6
    assert abs(pixel_auroc(masks, maps) - theirs_pixel) < 1e-6
