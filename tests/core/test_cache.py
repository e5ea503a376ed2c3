"""The feature cache: a rerun skips the backbones and gives the same outputs; stale entries are never used."""

import os
import shutil

import numpy as np
import pytest

from usad.core.config import with_overrides
import torch

from usad.models.usad.branches import fit_branch, load_branches
from usad.models.usad.inference import evaluate

from conftest import require_golden
from test_sweep import BackboneCalls


@pytest.fixture
def cached_cfg(golden_run, tmp_path):
    """The golden config with a feature cache, on a private copy of the golden images (their mtimes change)."""
    shutil.copytree(require_golden() / "data", tmp_path / "golden" / "data")
    return with_overrides(golden_run["config"], f"cache.dir={tmp_path / 'cache'}", f"data.root={tmp_path / 'golden'}")


def test_rerun_skips_backbones_with_identical_outputs(golden_run, cached_cfg, tmp_path):
    with BackboneCalls() as first:
        a = evaluate(cached_cfg)
    with BackboneCalls() as second:
        b = evaluate(cached_cfg)
    assert first.calls > 0 and second.calls == 0
    for k in a.scores:
        np.testing.assert_array_equal(a.scores[k], b.scores[k])
    np.testing.assert_array_equal(a.maps["m_fused"], b.maps["m_fused"])
    np.testing.assert_allclose(a.scores["s_fused"], golden_run["ours"]["s_fused"], rtol=1e-6)
    n_files = len(list((tmp_path / "cache").rglob("*.pt")))
    assert n_files == 3 * len(a.label)


def test_changed_image_or_setting_misses_the_cache(golden_run, cached_cfg, tmp_path):
    evaluate(cached_cfg)
    # a different branch input size is a different key: that branch's backbone runs again
    other = with_overrides(cached_cfg, "maclu.image_size=336")
    branches = load_branches(cached_cfg, torch.device("cpu"))
    branches["maclu"] = fit_branch("maclu", other)
    with BackboneCalls() as calls:
        evaluate(other, branches)
    n_batches = -(-len(golden_run["ours"]["label"]) // cached_cfg.data.batch_size)
    assert calls.calls == n_batches  # MACLU only
    # touching an image file (new mtime) invalidates its entries
    image = tmp_path / "golden" / "data" / golden_run["ours"]["files"][0]
    key_files_before = set((tmp_path / "cache").rglob("*.pt"))
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with BackboneCalls() as calls:
        evaluate(cached_cfg)
    assert calls.calls == 3  # the first batch (holding that image) is recomputed, once per backbone
    assert len(set((tmp_path / "cache").rglob("*.pt")) - key_files_before) == 3  # new entries for that image only


def test_changed_cache_dtype_misses_the_cache(golden_run, cached_cfg, tmp_path):
    """float32 and float16 entries are different keys: neither is served for the other."""
    evaluate(cached_cfg)  # float32 entries for every image
    half = with_overrides(cached_cfg, "cache.dtype=float16")
    with BackboneCalls() as calls:
        b = evaluate(half)
    n_batches = -(-len(golden_run["ours"]["label"]) // cached_cfg.data.batch_size)
    assert calls.calls == 3 * n_batches  # every backbone ran again
    entries = list((tmp_path / "cache").rglob("*.pt"))
    assert len(entries) == 2 * 3 * len(b.label)  # both dtypes kept side by side
    stored = {dtype for p in entries for dtype in (v.dtype for v in torch.load(p, weights_only=True).values())}
    assert stored == {torch.float32, torch.float16}
    with BackboneCalls() as calls:
        evaluate(half)
    assert calls.calls == 0  # and a float16 rerun hits its own entries
