"""PatchCore memory-bank subsampling (Sec. 4.4): sparse random projection + greedy k-center coreset.

The authors' code (ind_knn_ad style) projects the bank with scikit-learn's
``SparseRandomProjection(eps=0.9)`` right after ``np.random.seed(22)`` (the same
as ``random_state=22``; its float64 components give a float64 projection), then
runs the greedy k-center loop on the projected rows: first pick = row 0, each
step picks the row farthest from its nearest picked row (float64 distances).
If the Johnson-Lindenstrauss dimension k exceeds the feature dimension d,
scikit-learn raises and the authors run the greedy on the unprojected vectors.

Projection: on the CPU, scikit-learn's own ``transform`` (the authors' numbers
exactly). On CUDA, the same fitted float64 components as a dense (k, d) matrix,
multiplied on the device a chunk of rows at a time (the bank never leaves the
GPU; sums in another order, so z differs from scikit-learn's in the last bits).

``greedy_coreset_naive`` is the authors' loop, literally (the reference for
tests); ``greedy_coreset`` makes exactly the same picks in the same order:

- every distance it computes is the naive loop's own ``||z_i - last||``
  (subtract, then ``vector_norm``, in float64), so ties break identically;
- it skips the rows whose minimum provably cannot change (triangle inequality):
  with p_a(i) the pick nearest to row i, ``||z_i - last|| >= ||last - p_a(i)|| -
  min_d_i``, so a row with ``||last - p_a(i)|| >= 2 min_d_i`` (times 1 + 1e-9, far
  above float64 rounding) keeps its min_d. Late in the greedy most rows are
  skipped, so a pick reads a fraction of z instead of all of it;
- the rows left are gathered into a buffer and processed there; where more than
  half are left, the pass runs over all rows in place, a chunk at a time.
On CUDA the eager reduction's summation order for a row depends on the row's
address modulo 32 bytes (4 float64) and on the block shape, which is fixed from
1,024 rows per call on: a gathered row sits at a buffer position congruent to
its own index modulo 4, and every ``vector_norm`` call covers >= 1,024 rows (or
all N, as the naive loop does), so each row is summed as in the naive ``z - last``.
On the CPU the per-row sum does not depend on either.

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

from usad.core.errors import UsadError

log = logging.getLogger(__name__)

PROJECTION_CHUNK_ROWS = 4096  # CPU: rows cast to float64 at a time (4096 x 1536 x 8 B = 50 MB)
DEVICE_PROJECTION_CHUNK_BYTES = 2 ** 28  # CUDA: one float64 block of bank rows (21,845 rows at d = 1536)
CPU_GREEDY_CHUNK_BYTES = 2 ** 23  # one (rows, k) float64 difference block: 3653 rows at k = 287 (fastest measured)
GPU_GREEDY_CHUNK_BYTES = 2 ** 28
PRUNE_MARGIN = 1e-9  # relative slack of the triangle-inequality skip (a norm's float64 rounding is ~k * 1.1e-16)
PRUNE_MAX_FRACTION = 0.5  # above this share of rows left, one in-place pass over all rows is cheaper than gathering
CUDA_ALIGN_ROWS = 4  # CUDA reductions load 32-byte vectors: 4 float64; a row's start modulo 32 B sets its sum order
CUDA_MIN_ROWS = 1024  # from this many rows per call on, the reduction's block shape (so its order) no longer changes


class SamplerError(UsadError, ValueError):
    """Bad coreset settings or a bank the coreset cannot be computed on."""


def _check_matrix(features, name: str = "features") -> tuple[int, int]:
    """(N, d) of a 2-D torch tensor or NumPy array with N, d >= 1."""
    if not isinstance(features, (torch.Tensor, np.ndarray)):
        raise SamplerError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(features).__name__}")
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise SamplerError(f"{name}: expected a non-empty (N, d) matrix of patch features, got shape {tuple(features.shape)}")
    return int(features.shape[0]), int(features.shape[1])


def _float64_rows(features, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows [start, stop) as a finite float64 tensor on ``device`` (a copy; the bank itself is never cast
    whole), or a SamplerError naming the first row with NaN or inf."""
    block = torch.as_tensor(features[start:stop]).detach().to(device, non_blocking=True).to(torch.float64)
    finite = torch.isfinite(block).all(dim=1)
    if not bool(finite.all()):
        bad = start + int(torch.nonzero(~finite)[0, 0])
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


def dense_projection(features, transformer: SparseRandomProjection | None, device: torch.device | str,
                     chunk_size: int | None = None) -> torch.Tensor:
    """(N, d) bank -> (N, k) float64 ``features @ components.T`` on ``device``, ``chunk_size`` rows at a time.

    The components are the fitted ``transformer``'s float64 ones, as a dense (k, d)
    matrix (4 MB at k = 343, d = 1536); each block of rows is cast to float64 on the
    device. Peak memory: the (N, k) output plus one float64 block (default 256 MB).
    Equal to scikit-learn's sparse product up to the order of the sums (~1e-16 relative).
    ``transformer`` None (k > d): the unprojected rows as float64, like ``random_projection``.
    """
    n_samples, n_features = _check_matrix(features)
    device = torch.device(device)
    chunk_size = chunk_size or max(1, DEVICE_PROJECTION_CHUNK_BYTES // (8 * n_features))
    if chunk_size < 1:
        raise SamplerError(f"chunk_size must be >= 1, got {chunk_size}")
    components = None if transformer is None else torch.from_numpy(transformer.components_.toarray()).to(device)
    out = torch.empty((n_samples, n_features if components is None else components.shape[0]),
                      dtype=torch.float64, device=device)
    for start in range(0, n_samples, chunk_size):
        stop = min(start + chunk_size, n_samples)
        block = _float64_rows(features, start, stop, device)
        if components is None:
            out[start:stop] = block
        else:
            torch.matmul(block, components.T, out=out[start:stop])
    return out


def random_projection(features, eps: float, seed: int, chunk_size: int | None = None,
                      device: torch.device | str | None = None, dense: bool | None = None) -> torch.Tensor:
    """(N, d) bank -> (N, k) float64 projection, k = JL dimension, the authors' float64 one.

    ``dense`` (default: on CUDA) multiplies the dense float64 components on ``device``
    (``dense_projection``); otherwise scikit-learn's ``transform`` runs on the CPU,
    ``chunk_size`` rows cast to float64 at a time, identical to the authors' projection.
    Where k > d (small banks) the authors' code falls back to the unprojected
    vectors, and so does this (returned as float64), with a warning.
    """
    n_samples, n_features = _check_matrix(features)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dense = device.type == "cuda" if dense is None else dense
    transformer = fit_projection(n_samples, n_features, eps, seed)
    if transformer is None:
        log.warning("coreset: the random projection for %d samples at eps=%g has %d dimensions, more than the "
                    "%d features; running the greedy coreset on the unprojected vectors (as the authors' code does)",
                    n_samples, eps, projection_dim(n_samples, eps), n_features)
    if dense:
        return dense_projection(features, transformer, device, chunk_size)
    chunk_size = PROJECTION_CHUNK_ROWS if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise SamplerError(f"chunk_size must be >= 1, got {chunk_size}")
    width = n_features if transformer is None else transformer.n_components_
    out = np.empty((n_samples, width), dtype=np.float64)
    for start in range(0, n_samples, chunk_size):
        stop = min(start + chunk_size, n_samples)
        block = _float64_rows(features, start, stop).numpy()
        out[start:stop] = block if transformer is None else transformer.transform(block)
    return torch.from_numpy(out).to(device)


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


def _chunk_step(chunk_rows: int, align: int, min_rows: int) -> int:
    """Rows per chunk: ``chunk_rows`` rounded down to a multiple of ``align``, at least ``min_rows``."""
    return max(min_rows, chunk_rows // align * align, align)


def _chunk_bounds(n: int, chunk_rows: int, align: int, min_rows: int) -> list[tuple[int, int]]:
    """[start, stop) chunks covering n rows: starts are multiples of ``align``, and every chunk has at
    least ``min_rows`` rows (or all n): a short last chunk starts earlier and overlaps the one before
    (recomputing a distance is harmless: the same value again)."""
    step = _chunk_step(chunk_rows, align, min_rows)
    bounds = [(a, min(a + step, n)) for a in range(0, n, step)]
    a, b = bounds[-1]
    if b - a < min_rows and a > 0:
        bounds[-1] = (max(0, (n - min_rows) // align * align), n)
    return bounds


def rows_to_update(pick_dist: torch.Tensor, nearest: torch.Tensor, min_d: torch.Tensor) -> torch.Tensor:
    """Indices of the rows whose min_d a new pick may lower; the others provably keep it.

    With p_a the pick nearest to row i (``nearest``) and ``pick_dist`` the distances of
    the new pick to every pick: ||z_i - new|| >= ||new - p_a|| - ||z_i - p_a||, which is
    >= min_d_i wherever ||new - p_a|| >= 2 min_d_i (checked with a 1e-9 relative margin).
    """
    return torch.nonzero(pick_dist[nearest] < 2 * (1 + PRUNE_MARGIN) * min_d).squeeze(1)


class _RowBlock:
    """Rows [start, stop) of z with their slices of the shared min-distance and nearest-pick buffers.

    min_d[i] = min over picks p of ||z_i - z_p||, computed with the very ops of the naive
    loop (subtract, then ``vector_norm``); nearest[i] = index (in pick order) of a pick
    at that distance, for the triangle-inequality skip. ``align`` / ``min_rows``: the
    row layout every ``vector_norm`` call keeps (see the module docstring).
    """

    def __init__(self, z: torch.Tensor, min_d: torch.Tensor, nearest: torch.Tensor, start: int, stop: int,
                 chunk_rows: int, align: int, min_rows: int):
        self.z, self.min_d, self.nearest = z[start:stop], min_d[start:stop], nearest[start:stop]
        self.rows, self.chunk_rows, self.align, self.min_rows = stop - start, chunk_rows, align, min_rows
        self.chunks = _chunk_bounds(self.rows, chunk_rows, align, min_rows)
        step = _chunk_step(chunk_rows, align, min_rows)
        # a chunk is at most one step, or a short last one of < min_rows + align rows; gathered rows of one
        # class modulo ``align`` may spread over up to ``align`` times as many buffer positions
        capacity = max(min(step, align * max(self.rows, min_rows)), min_rows + align)
        self.diff = torch.empty(capacity, z.shape[1], dtype=z.dtype, device=z.device)
        self.dist = torch.empty(capacity, dtype=z.dtype, device=z.device)

    def _norms(self, rows: slice | torch.Tensor, out: torch.Tensor, last: torch.Tensor) -> None:
        """out = ||z[rows] - last|| (rows: a slice, or indices gathered into the difference buffer)."""
        diff = self.diff[:len(out)]
        if isinstance(rows, slice):
            torch.sub(self.z[rows], last, out=diff)
        else:
            torch.index_select(self.z, 0, rows, out=diff)
            diff.sub_(last)
        torch.linalg.vector_norm(diff, dim=1, out=out)

    def reset(self, last: torch.Tensor) -> None:
        """min_d = distances to the first pick (pick 0)."""
        for a, b in self.chunks:
            self._norms(slice(a, b), self.dist[:b - a], last)
            self.min_d[a:b].copy_(self.dist[:b - a])
        self.nearest.zero_()

    def update(self, last: torch.Tensor, q: int, pick_dist: torch.Tensor) -> None:
        """min_d = min(min_d, ||z - last||) for pick number q (``last``); pick_dist[j] = ||last - pick j||.

        Rows with pick_dist[nearest] >= 2 (1 + margin) min_d keep their min_d (triangle inequality).
        """
        left = rows_to_update(pick_dist, self.nearest, self.min_d)
        if len(left) == 0:
            return
        if len(left) > PRUNE_MAX_FRACTION * self.rows or self.rows < self.min_rows:
            self._update_all(last, q)
        else:
            self._update_rows(last, q, left)

    def _update_all(self, last: torch.Tensor, q: int) -> None:
        for a, b in self.chunks:
            dist, min_d = self.dist[:b - a], self.min_d[a:b]
            self._norms(slice(a, b), dist, last)
            self.nearest[a:b].masked_fill_(dist < min_d, q)
            torch.minimum(dist, min_d, out=min_d)

    def _update_rows(self, last: torch.Tensor, q: int, rows: torch.Tensor) -> None:
        """The rows ``rows`` (sorted), gathered: row i goes to a position congruent to i modulo ``align``."""
        cls = rows % self.align
        rank = torch.nn.functional.one_hot(cls, self.align).cumsum(0).gather(1, cls[:, None])[:, 0] - 1
        pos = rank * self.align + cls
        n = max(int(rank.max()) + 1, 1) * self.align
        n = max(n, -(-self.min_rows // self.align) * self.align)
        source = torch.zeros(n, dtype=torch.long, device=rows.device)  # padding: row 0, its distance unused
        source[pos] = rows
        dist = torch.empty(n, dtype=self.z.dtype, device=self.z.device)
        for a, b in _chunk_bounds(n, self.chunk_rows, self.align, self.min_rows):
            self._norms(source[a:b], dist[a:b], last)
        dist, min_d = dist[pos], self.min_d[rows]
        self.nearest[rows] = torch.where(dist < min_d, q, self.nearest[rows])
        self.min_d[rows] = torch.minimum(dist, min_d)


def _row_blocks(z: torch.Tensor, min_d: torch.Tensor, nearest: torch.Tensor, workers: int, chunk_rows: int,
                align: int, min_rows: int) -> list[_RowBlock]:
    bounds = (np.linspace(0, z.shape[0], workers + 1) // align * align).astype(int)
    bounds[-1] = z.shape[0]
    return [_RowBlock(z, min_d, nearest, a, b, chunk_rows, align, min_rows)
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


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
                   chunk_size: int | None = None, progress: bool = False,
                   align_rows: int | None = None, min_rows: int | None = None) -> torch.LongTensor:
    """Greedy k-center picks on (N, k) vectors: the same picks, in the same order, as ``greedy_coreset_naive``.

    First pick = row 0; pick t = argmax_i min_{p < t} ||z_i - z_p|| (first index on
    ties), in float64. Rows whose minimum cannot change are skipped (module
    docstring); the others are processed ``chunk_size`` rows at a time (default:
    8 MB of differences on CPU, 256 MB on GPU). ``align_rows`` / ``min_rows``: the
    row layout of each ``vector_norm`` call (default: 4 / 1,024 on CUDA, 1 / 1 on
    CPU, where the sums do not depend on it). Returns the n row indices (CPU
    LongTensor). Exact equality with the naive loop holds on the same device.
    """
    _check_picks(z, n)
    device = torch.device(device) if device is not None else z.device
    z = z.to(device, torch.float64)
    chunk_rows = chunk_size or _default_chunk_rows(z.shape[1], device)
    if chunk_rows < 1:
        raise SamplerError(f"chunk_size must be >= 1, got {chunk_size}")
    cuda = device.type == "cuda"
    align = align_rows or (CUDA_ALIGN_ROWS if cuda else 1)
    min_rows = min_rows or (CUDA_MIN_ROWS if cuda else 1)
    picks = torch.zeros(n, dtype=torch.long, device=device)
    last = z[0:1].clone()
    min_d = torch.empty(z.shape[0], dtype=torch.float64, device=device)
    nearest = torch.zeros(z.shape[0], dtype=torch.long, device=device)
    picked = torch.empty(n, z.shape[1], dtype=torch.float64, device=device)  # z of the picks, for pick_dist
    picked_diff = torch.empty_like(picked)
    pick_dist = torch.zeros(n, dtype=torch.float64, device=device)
    picked[0] = last[0]
    with _block_workers(device) as (workers, run_all):
        blocks = _row_blocks(z, min_d, nearest, workers, chunk_rows, align, min_rows)
        run_all(lambda b: b.reset(last), blocks)
        for t in tqdm(range(1, n), desc="coreset", unit="pick", disable=not progress):
            if t > 1:  # at t = 1 the naive loop's update with z_0 leaves min_d unchanged
                q = t - 1  # ``last`` is pick q
                picked[q] = last[0]
                torch.sub(picked[:q], last, out=picked_diff[:q])
                torch.linalg.vector_norm(picked_diff[:q], dim=1, out=pick_dist[:q])  # pick_dist[q] stays 0
                run_all(lambda b: b.update(last, q, pick_dist), blocks)
            select = torch.argmax(min_d).view(1)
            picks[t:t + 1] = select
            torch.index_select(z, 0, select, out=last)
            min_d.index_fill_(0, select, 0.0)
            nearest.index_fill_(0, select, t)
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
        z = random_projection(features, self.eps, self.seed, device=self.device)  # on CUDA: on the device
        n = self.n_picks(n_samples)
        log.info("coreset: %d of %d rows, greedy on %d x %d float64 (from d = %d)",
                 n, n_samples, z.shape[0], z.shape[1], n_features)
        return greedy_coreset(z, n, device=self.device, progress=self.progress)


class IdentitySampler:
    """Keep every bank row (no subsampling)."""

    def run(self, features: torch.Tensor | np.ndarray) -> torch.LongTensor:
        n_samples, _ = _check_matrix(features)
        return torch.arange(n_samples)
