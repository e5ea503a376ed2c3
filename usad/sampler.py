"""PatchCore memory-bank subsampling (Sec. 4.4): sparse random projection + greedy k-center coreset.

The authors' code (ind_knn_ad style) projects the bank with scikit-learn's
``SparseRandomProjection(eps=0.9)`` right after ``np.random.seed(22)`` (the same
as ``random_state=22``; its float64 components give a float64 projection), then
runs the greedy k-center loop on the projected rows: first pick = row 0, each
step picks the row farthest from its nearest picked row (float64 distances).
If the Johnson-Lindenstrauss dimension k exceeds the feature dimension d,
scikit-learn raises and the authors run the greedy on the unprojected vectors.

``greedy_coreset_naive`` is that loop, literally (the reference for tests);
``greedy_coreset`` makes exactly the same picks in the same order, with one
preallocated min-distance buffer updated in place, chunk by chunk: it evaluates
the very same ``||z - last||`` (subtract, then ``vector_norm``) as the naive loop,
so ties break identically; only the N x k temporary per step is gone.

The samplers follow amazon-science/patchcore-inspection: ``.run(features)``
returns the indices of the bank rows to keep.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim
from tqdm import tqdm

from .errors import UsadError

log = logging.getLogger(__name__)

PROJECTION_CHUNK_ROWS = 4096  # rows cast to float64 at a time (4096 x 1536 x 8 B = 50 MB)
CPU_GREEDY_CHUNK_BYTES = 2 ** 23  # one (rows, k) float64 difference block: 3653 rows at k = 287 (fastest measured)
GPU_GREEDY_CHUNK_BYTES = 2 ** 28


class SamplerError(UsadError, ValueError):
    """Bad coreset settings or a bank the coreset cannot be computed on."""


def _check_matrix(features, name: str = "features") -> tuple[int, int]:
    """(N, d) of a 2-D torch tensor or NumPy array with N, d >= 1."""
    if not isinstance(features, (torch.Tensor, np.ndarray)):
        raise SamplerError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(features).__name__}")
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise SamplerError(f"{name}: expected a non-empty (N, d) matrix of patch features, got shape {tuple(features.shape)}")
    return int(features.shape[0]), int(features.shape[1])


def _float64_rows(features, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as a finite float64 NumPy array (a copy; the bank itself is never cast whole)."""
    block = features[start:stop]
    if isinstance(block, torch.Tensor):
        block = block.detach().to("cpu", torch.float64).numpy()
    block = np.asarray(block, dtype=np.float64)
    if not np.isfinite(block).all():
        bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
        raise SamplerError(f"features: row {bad} of the memory bank is not finite (NaN or inf); "
                           "check the backbone weights and the input images")
    return block


def projection_dim(n_samples: int, eps: float) -> int:
    """k = johnson_lindenstrauss_min_dim(N, eps) = 4 ln N / (eps^2 / 2 - eps^3 / 3), what eps='auto' fits."""
    if not 0 < eps < 1:
        raise SamplerError(f"projection_eps: the Johnson-Lindenstrauss bound needs 0 < eps < 1, got {eps}")
    return int(johnson_lindenstrauss_min_dim(n_samples, eps=eps))


def fit_projection(n_samples: int, n_features: int, eps: float, seed: int) -> SparseRandomProjection | None:
    """The authors' ``SparseRandomProjection(eps)`` fitted on an (N, d) float64 bank, without the bank.

    The random matrix depends only on (k, d, seed), so fitting on one float64 row
    with ``n_components=k`` gives the same float64 components as fitting on the
    full float64 bank. None where scikit-learn would raise (k > d, or k <= 0 for N = 1).
    """
    k = projection_dim(n_samples, eps)
    if k <= 0 or k > n_features:
        return None
    return SparseRandomProjection(n_components=k, random_state=seed).fit(np.zeros((1, n_features)))


def random_projection(features, eps: float, seed: int, chunk_size: int = PROJECTION_CHUNK_ROWS) -> torch.Tensor:
    """(N, d) bank -> (N, k) float64 projection, k = JL dimension, identical to the authors' float64 one.

    Rows are cast to float64 and projected ``chunk_size`` at a time. Where k > d
    (small banks) the authors' code falls back to the unprojected vectors, and
    so does this (returned as float64), with a warning.
    """
    n_samples, n_features = _check_matrix(features)
    if chunk_size < 1:
        raise SamplerError(f"chunk_size must be >= 1, got {chunk_size}")
    transformer = fit_projection(n_samples, n_features, eps, seed)
    if transformer is None:
        log.warning("coreset: the random projection for %d samples at eps=%g has %d dimensions, more than the "
                    "%d features; running the greedy coreset on the unprojected vectors (as the authors' code does)",
                    n_samples, eps, projection_dim(n_samples, eps), n_features)
    width = n_features if transformer is None else transformer.n_components_
    out = np.empty((n_samples, width), dtype=np.float64)
    for start in range(0, n_samples, chunk_size):
        stop = min(start + chunk_size, n_samples)
        block = _float64_rows(features, start, stop)
        out[start:stop] = block if transformer is None else transformer.transform(block)
    return torch.from_numpy(out)


def _check_picks(z: torch.Tensor, n: int) -> None:
    _check_matrix(z, "z")
    if not isinstance(z, torch.Tensor):
        raise SamplerError(f"z: expected a torch.Tensor, got {type(z).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SamplerError(f"number of coreset picks must be an integer >= 1, got {n!r}")


def greedy_coreset_naive(z: torch.Tensor, n: int) -> torch.LongTensor:
    """The authors' greedy k-center loop, literally (reference implementation; N x k temporary per step)."""
    _check_picks(z, n)
    z = z.to(torch.float64)
    select_idx = 0
    last = z[select_idx:select_idx + 1]
    idx = [torch.tensor(select_idx)]
    min_d = torch.linalg.norm(z - last, dim=1, keepdims=True)
    for _ in range(n - 1):
        d = torch.linalg.norm(z - last, dim=1, keepdims=True)
        min_d = torch.minimum(d, min_d)
        select_idx = torch.argmax(min_d)
        last = z[select_idx:select_idx + 1]
        min_d[select_idx] = 0
        idx.append(select_idx)
    return torch.stack(idx).long()


def _default_chunk_rows(k: int, device: torch.device) -> int:
    budget = GPU_GREEDY_CHUNK_BYTES if device.type == "cuda" else CPU_GREEDY_CHUNK_BYTES
    return max(1, budget // (8 * k))


class _RowBlock:
    """Rows [start, stop) of z and of the shared min-distance buffer, with their own chunk buffers.

    min_d[i] = min over picks p of ||z_i - z_p||, updated in place ``chunk_rows`` rows
    at a time with the very ops of the naive loop (subtract, then ``vector_norm``).
    """

    def __init__(self, z: torch.Tensor, min_d: torch.Tensor, start: int, stop: int, chunk_rows: int):
        self.z, self.min_d = z[start:stop], min_d[start:stop]
        rows = min(chunk_rows, stop - start)
        self.diff = torch.empty(rows, z.shape[1], dtype=z.dtype, device=z.device)
        self.dist = torch.empty(rows, dtype=z.dtype, device=z.device)

    def _distances(self, last: torch.Tensor):
        """Yield (min_d chunk, ||z[chunk] - last||)."""
        rows = self.diff.shape[0]
        for start in range(0, self.z.shape[0], rows):
            stop = min(start + rows, self.z.shape[0])
            diff, dist = self.diff[:stop - start], self.dist[:stop - start]
            torch.sub(self.z[start:stop], last, out=diff)
            torch.linalg.vector_norm(diff, dim=1, out=dist)
            yield self.min_d[start:stop], dist

    def reset(self, last: torch.Tensor) -> None:
        for min_d, dist in self._distances(last):
            min_d.copy_(dist)

    def update(self, last: torch.Tensor) -> None:
        for min_d, dist in self._distances(last):
            torch.minimum(dist, min_d, out=min_d)


def _row_blocks(z: torch.Tensor, min_d: torch.Tensor, workers: int, chunk_rows: int) -> list[_RowBlock]:
    bounds = np.linspace(0, z.shape[0], workers + 1).astype(int)
    return [_RowBlock(z, min_d, a, b, chunk_rows) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@contextmanager
def _block_workers(device: torch.device):
    """Run the row blocks in parallel: on CPU one thread per torch thread, each op single-threaded.

    One barrier per pick instead of one per op and chunk: with many small parallel
    ops, a thread descheduled by another busy process stalls every op (measured
    10x slower under contention on 2 cores). On GPU: one block, no threads.
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield 1, lambda fn, blocks: [fn(b) for b in blocks]
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            yield threads, lambda fn, blocks: list(pool.map(fn, blocks))
    finally:
        torch.set_num_threads(threads)


def greedy_coreset(z: torch.Tensor, n: int, device: torch.device | str | None = None,
                   chunk_size: int | None = None, progress: bool = False) -> torch.LongTensor:
    """Greedy k-center picks on (N, k) vectors: the same picks, in the same order, as ``greedy_coreset_naive``.

    First pick = row 0; pick t = argmax_i min_{p < t} ||z_i - z_p|| (first index on
    ties), in float64. Per row block, ``chunk_size`` rows of z - last exist at a
    time (default: 8 MB on CPU, 256 MB on GPU). Returns the n row indices (CPU
    LongTensor). Exact equality with the naive loop holds on the same device
    (the norm's summation order is the device's).
    """
    _check_picks(z, n)
    device = torch.device(device) if device is not None else z.device
    z = z.to(device, torch.float64)
    chunk_rows = chunk_size or _default_chunk_rows(z.shape[1], device)
    if chunk_rows < 1:
        raise SamplerError(f"chunk_size must be >= 1, got {chunk_size}")
    picks = torch.zeros(n, dtype=torch.long, device=device)
    last = z[0:1].clone()
    min_d = torch.empty(z.shape[0], dtype=torch.float64, device=device)
    with _block_workers(device) as (workers, run_all):
        blocks = _row_blocks(z, min_d, workers, chunk_rows)
        run_all(lambda b: b.reset(last), blocks)
        for t in tqdm(range(1, n), desc="coreset", unit="pick", disable=not progress):
            if t > 1:  # at t = 1 the naive loop's update with z_0 leaves min_d unchanged
                run_all(lambda b: b.update(last), blocks)
            select = torch.argmax(min_d).view(1)
            picks[t:t + 1] = select
            torch.index_select(z, 0, select, out=last)
            min_d.index_fill_(0, select, 0.0)
    return picks.cpu()


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise SamplerError(f"coreset_ratio must be in (0, 1], got {ratio}")


class GreedyCoresetSampler:
    """Keep n = max(1, int(ratio * N)) bank rows: greedy k-center on the seeded sparse random projection."""

    def __init__(self, ratio: float, eps: float, seed: int, device: torch.device | str | None = None,
                 progress: bool = True):
        _check_ratio(ratio)
        projection_dim(2, eps)  # validates eps now, not after the features are extracted
        self.ratio, self.eps, self.seed, self.device, self.progress = ratio, eps, seed, device, progress

    def n_picks(self, n_samples: int) -> int:
        return max(1, int(self.ratio * n_samples))

    def run(self, features: torch.Tensor | np.ndarray) -> torch.LongTensor:
        """(N, d) features -> LongTensor of the picked row indices, in pick order."""
        n_samples, n_features = _check_matrix(features)
        z = random_projection(features, self.eps, self.seed)
        n = self.n_picks(n_samples)
        log.info("coreset: %d of %d rows, greedy on %d x %d float64 (from d = %d)",
                 n, n_samples, z.shape[0], z.shape[1], n_features)
        return greedy_coreset(z, n, device=self.device, progress=self.progress)


class IdentitySampler:
    """Keep every bank row (no subsampling)."""

    def run(self, features: torch.Tensor | np.ndarray) -> torch.LongTensor:
        n_samples, _ = _check_matrix(features)
        return torch.arange(n_samples)
