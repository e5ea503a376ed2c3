"""PatchCore's memory options give the same model (memory-mapped bank) or a close one (float16 bank)."""

import numpy as np
import torch

from usad.core.config import with_overrides
from usad.models.usad.branches import fit_branch


def test_memory_mapped_bank_gives_the_same_model_and_leaves_no_file(golden_run, tmp_path):
    cfg = golden_run["config"]
    ram = fit_branch("patchcore", cfg)
    mapped = fit_branch("patchcore", with_overrides(cfg, f"patchcore.bank_memmap={tmp_path / 'mm'}"))
    assert torch.equal(ram.bank, mapped.bank)
    np.testing.assert_allclose(ram.bank.numpy(), golden_run["ref"]["pc_memory_bank"], atol=1e-4)
    assert list((tmp_path / "mm").iterdir()) == []  # the temporary bank file is gone


def test_float16_bank_is_close(golden_run):
    cfg = golden_run["config"]
    half = fit_branch("patchcore", with_overrides(cfg, "patchcore.bank_dtype=float16"))
    assert half.bank.dtype == torch.float16 and half.bank.shape == golden_run["ref"]["pc_memory_bank"].shape
    s32, _ = fit_branch("patchcore", cfg).predict(torch.zeros(2, 3, 406, 406))
    s16, _ = half.predict(torch.zeros(2, 3, 406, 406))
    np.testing.assert_allclose(s16.numpy(), s32.numpy(), rtol=0.05)
