"""Coreset sampler: projection identical to the authors' float64 one, fast greedy == the literal loop."""

import logging

import numpy as np
import pytest
import torch
from sklearn.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim

from usad.core.sampler import (
    GreedyCoresetSampler,
    IdentitySampler,
    SamplerError,
    fit_projection,
    greedy_coreset,
    greedy_coreset_naive,
    random_projection,
)


def gaussian(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def clustered_with_duplicates(n=4000, d=50, clusters=20, duplicates=400, seed=0):
    """Tight Gaussian clusters (sigma 1e-3 around centres of scale 5) plus exact copies of random rows."""
    g = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(clusters, d, generator=g, dtype=torch.float64)
    x = centres[torch.randint(0, clusters, (n - duplicates,), generator=g)]
    x = x + 1e-3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[torch.randint(0, n - duplicates, (duplicates,), generator=g)]])
    return x[torch.randperm(n, generator=g)]


def lattice(n=2000, d=6, seed=0):
    """Small-integer points: many exactly equal distances, so the first-index tie rule decides."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n, d), generator=g).double()


def near_tie_lattice(n=2000, d=6, seed=0):
    """Lattice points moved by ~1e-13: distances differ in the last bits only, so any change in how
    ||z_i - z_p|| is rounded (float32, or |z|^2 - 2 z.p + |p|^2) reorders the picks."""
    g = torch.Generator().manual_seed(seed)
    return lattice(n, d, seed) + 1e-13 * torch.randn(n, d, generator=g, dtype=torch.float64)


CASES = {
    "gaussian": (lambda: gaussian(3000, 40, 1), 200),
    "clustered+duplicates": (clustered_with_duplicates, 300),
    "lattice ties": (lattice, 150),
    "near-tie lattice": (near_tie_lattice, 150),
    "all rows identical": (lambda: torch.ones(50, 4, dtype=torch.float64), 7),
    "single row": (lambda: gaussian(1, 5, 2), 1),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk_size", [None, 97])
def test_fast_greedy_equals_literal_loop(case, chunk_size):
    make, n = CASES[case]
    z = make()
    assert torch.equal(greedy_coreset(z, n, chunk_size=chunk_size), greedy_coreset_naive(z, n))


@pytest.mark.parametrize("n", [1, 2, 64])
def test_fast_greedy_small_n_and_all_rows(n):
    z = gaussian(64, 3, 3)
    fast = greedy_coreset(z, n)
    assert torch.equal(fast, greedy_coreset_naive(z, n))
    assert fast[0] == 0 and fast.dtype == torch.long
    if n == 64:
        assert sorted(fast.tolist()) == list(range(64))


def test_fast_greedy_single_thread_path():
    z = clustered_with_duplicates(n=1500, d=20, clusters=8, duplicates=100, seed=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = greedy_coreset(z, 120, chunk_size=50)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fast, greedy_coreset_naive(z, 120))
    assert torch.get_num_threads() == threads


def test_greedy_restores_thread_count():
    threads = torch.get_num_threads()
    greedy_coreset(gaussian(100, 4, 5), 10)
    assert torch.get_num_threads() == threads


def test_literal_loop_is_greedy_k_center():
    """Independent check of the reference: pick t maximises the distance to its nearest earlier pick."""
    z = gaussian(300, 5, 6)
    picks = greedy_coreset_naive(z, 40).tolist()
    dist = torch.cdist(z, z)
    assert picks[0] == 0
    for t in range(1, len(picks)):
        nearest = dist[:, picks[:t]].min(dim=1).values
        assert nearest[picks[t]] == pytest.approx(nearest.max().item(), rel=1e-12)


def test_duplicate_picks_once_everything_is_covered():
    """More picks than distinct rows: min_d is all zero and argmax returns row 0, as in the authors' loop."""
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert greedy_coreset(z, 4).tolist() == greedy_coreset_naive(z, 4).tolist() == [0, 1, 0, 0]


def test_projection_components_are_float64_and_match_full_fit():
    x = gaussian(600, 300, 7).numpy()
    full = SparseRandomProjection(eps=0.9, random_state=22).fit(x)
    ours = fit_projection(600, 300, eps=0.9, seed=22)
    assert ours.components_.dtype == np.float64 and full.components_.dtype == np.float64
    assert ours.components_.shape == full.components_.shape == (johnson_lindenstrauss_min_dim(600, eps=0.9), 300)
    assert (ours.components_ != full.components_).nnz == 0


def test_projection_matches_authors_global_seed_call():
    """``np.random.seed(22); SparseRandomProjection(eps=0.9)`` (random_state=None) == random_state=22."""
    x = gaussian(600, 300, 8).numpy()
    state = np.random.get_state()
    try:
        np.random.seed(22)
        authors = SparseRandomProjection(eps=0.9).fit(x)
    finally:
        np.random.set_state(state)
    assert (fit_projection(600, 300, eps=0.9, seed=22).components_ != authors.components_).nnz == 0


@pytest.mark.parametrize("as_numpy", [False, True])
def test_chunked_projection_equals_sklearn_on_full_float64(as_numpy):
    x32 = gaussian(700, 256, 9).float()
    reference = SparseRandomProjection(eps=0.9, random_state=22).fit_transform(x32.double().numpy())
    z = random_projection(x32.numpy() if as_numpy else x32, eps=0.9, seed=22, chunk_size=64)
    assert z.dtype == torch.float64 and z.shape == reference.shape
    assert torch.equal(z, torch.from_numpy(reference))


def test_projection_differs_with_seed():
    x = gaussian(700, 256, 9).float()
    assert not torch.equal(random_projection(x, 0.9, 22), random_projection(x, 0.9, 23))


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_fallback_exactly_where_sklearn_raises(offset):
    n = 500
    d = int(johnson_lindenstrauss_min_dim(n, eps=0.9)) + offset
    x = gaussian(n, d, 10).numpy()
    try:
        SparseRandomProjection(eps=0.9, random_state=22).fit(x)
        sklearn_raises = False
    except ValueError:
        sklearn_raises = True
    assert sklearn_raises == (offset < 0)
    assert (fit_projection(n, d, eps=0.9, seed=22) is None) == sklearn_raises


@pytest.mark.parametrize("n_rows", [1, 50])
def test_fallback_returns_unprojected_float64_with_warning(n_rows, caplog):
    x = gaussian(n_rows, 20, 11).float()
    with caplog.at_level(logging.WARNING, logger="usad.core.sampler"):
        z = random_projection(x, eps=0.9, seed=22, chunk_size=16)
    assert z.dtype == torch.float64 and torch.equal(z, x.double())
    assert "unprojected" in caplog.text


def test_greedy_sampler_equals_authors_pipeline():
    x = clustered_with_duplicates(n=3000, d=256, clusters=10, duplicates=300, seed=12).float()
    projected = torch.from_numpy(SparseRandomProjection(eps=0.9, random_state=22).fit_transform(x.double().numpy()))
    expected = greedy_coreset_naive(projected, int(0.05 * 3000))
    sampler = GreedyCoresetSampler(0.05, 0.9, 22, device="cpu", progress=False)
    assert torch.equal(sampler.run(x), expected)
    assert torch.equal(sampler.run(x.numpy()), expected)


def test_greedy_sampler_keeps_at_least_one_row():
    picks = GreedyCoresetSampler(0.01, 0.9, 22, progress=False).run(gaussian(20, 8, 13).float())
    assert picks.tolist() == [0]


def test_identity_sampler_keeps_every_row():
    assert torch.equal(IdentitySampler().run(np.zeros((17, 3), np.float32)), torch.arange(17))


@pytest.mark.parametrize("ratio, eps", [(0, 0.9), (1.5, 0.9), (0.1, 1.0), (0.1, 0.0)])
def test_bad_settings_raise(ratio, eps):
    with pytest.raises(SamplerError, match="coreset_ratio|projection_eps"):
        GreedyCoresetSampler(ratio, eps, 22)


def test_bad_features_raise():
    x = gaussian(100, 8, 14).float()
    x[37, 2] = float("nan")
    with pytest.raises(SamplerError, match="row 37"):
        random_projection(x, 0.9, 22, chunk_size=10)
    with pytest.raises(SamplerError, match="shape"):
        GreedyCoresetSampler(0.1, 0.9, 22).run(torch.zeros(10))
    with pytest.raises(SamplerError, match="picks"):
        greedy_coreset(gaussian(10, 2, 15), 0)
