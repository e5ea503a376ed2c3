"""The exact fast greedy coreset against the authors' loop, and the seeded float64 projection."""

import numpy as np
import pytest
import torch
from sklearn.random_projection import SparseRandomProjection

from usad.core.sampler import (GreedyCoresetSampler, IdentitySampler, SamplerError, greedy_coreset, greedy_coreset_naive,
                          projection_dim, random_projection)


def clustered(n, d, clusters=30, spread=0.05, duplicates=0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d))
    if duplicates:
        x[rng.integers(0, n, duplicates)] = x[rng.integers(0, n, duplicates)]  # exact duplicate rows
    return torch.from_numpy(x)


@pytest.mark.parametrize("n, d, picks, dup", [(3000, 16, 200, 50), (5000, 40, 300, 0), (500, 8, 500, 0), (50, 3, 50, 10)])
def test_fast_greedy_makes_the_authors_picks(n, d, picks, dup):
    z = clustered(n, d, duplicates=dup, seed=n)
    fast = greedy_coreset(z, picks, chunk_size=257)  # odd chunk size: chunk borders inside clusters
    naive = greedy_coreset_naive(z, picks)
    assert fast.tolist() == naive.tolist()
    assert fast[0] == 0


def test_fast_greedy_default_chunks_equal_naive_on_ties():
    z = torch.zeros(400, 4, dtype=torch.float64)
    z[::7] = 1.0  # many exactly tied distances: first index must win, as in torch.argmax
    z[::11, 1] = 2.0
    assert greedy_coreset(z, 20).tolist() == greedy_coreset_naive(z, 20).tolist()


def test_projection_is_float64_and_equals_a_full_float64_fit():
    bank = clustered(6000, 300, seed=1).float()
    ours = random_projection(bank, 0.9, 22, chunk_size=1000)
    full = SparseRandomProjection(eps=0.9, random_state=22).fit(bank.double().numpy())
    assert full.components_.dtype == np.float64
    assert ours.dtype == torch.float64 and ours.shape == (6000, projection_dim(6000, 0.9))
    np.testing.assert_allclose(ours.numpy(), full.transform(bank.double().numpy()), rtol=1e-12, atol=1e-12)


def test_small_bank_falls_back_to_unprojected_vectors(caplog):
    bank = clustered(100, 20, seed=2).float()
    z = random_projection(bank, 0.9, 22)
    assert "unprojected" in caplog.text
    assert z.dtype == torch.float64 and torch.equal(z, bank.double())


def test_samplers():
    bank = clustered(2000, 256, seed=3).float()  # 256 > projection_dim(2000, 0.9) = 187: really projected
    picks = GreedyCoresetSampler(0.01, 0.9, 22, progress=False).run(bank)
    assert len(picks) == 20
    assert picks.tolist() == greedy_coreset_naive(random_projection(bank, 0.9, 22), 20).tolist()
    assert IdentitySampler().run(bank).tolist() == list(range(2000))
    with pytest.raises(SamplerError, match="coreset_ratio"):
        GreedyCoresetSampler(0.0, 0.9, 22)
    with pytest.raises(SamplerError, match="eps"):
        GreedyCoresetSampler(0.1, 1.5, 22)
    bad = bank.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(SamplerError, match="row 7"):
        GreedyCoresetSampler(0.01, 0.9, 22, progress=False).run(bad)
