"""scikit-learn's KMeans in torch, for MACLU's patch tokens (Sec. 4.2) on the device that holds them.

What ``KMeans(n_clusters, n_init="auto", random_state=seed).fit(X)`` does on float32 X,
step by step, and how ``kmeans`` here does it with X left where it is (a GPU):

1. X is centred on its column mean (the centres get it back at the end). Here each
   block of rows is centred in float32 when it is read; the mean is summed in float64
   (scikit-learn's is a float32 sum, so the centred rows can differ in the last bit).
2. k-means++ seeding (``_kmeans_plusplus``, one init as ``n_init="auto"`` gives): the
   first centre is drawn uniformly by ``np.random.RandomState(seed)``; each next one is
   the best (lowest potential) of 2 + int(ln k) candidates drawn with probability
   proportional to the squared distance to the nearest centre. The squared distances
   are computed on the device in float64 and rounded to float32, as scikit-learn
   stores them; those N-vectors go to the host, where the very NumPy calls of
   scikit-learn (the same generator, float32 cumulative sum, searchsorted) pick the
   candidates. So the seeds are scikit-learn's wherever the float32 distances agree.
3. Lloyd iterations, at most ``max_iter`` (300): every row goes to its nearest centre
   (first on ties), each centre moves to the mean of its rows (a cluster left empty
   takes the row farthest from its centre); stop when no label changes, or when the
   summed squared centre shift is <= tol (1e-4) * the mean per-feature variance of X;
   then label once more with the final centres. Here distances and sums are float64
   (scikit-learn: float32), centres are rounded to float32 each step as it keeps them.

Cost per Lloyd step: one read of X. Memory beyond X: a few float64 blocks of rows
(``CHUNK_BYTES`` each), two label vectors, and during seeding up to three float32
N-vectors (on the device, then on the host).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from usad.core.errors import UsadError

SKLEARN = KMeans().get_params()
TOL, MAX_ITER = SKLEARN["tol"], SKLEARN["max_iter"]  # scikit-learn's defaults, which the authors' call uses
CHUNK_BYTES = 2 ** 27  # one float64 block of rows per pass (43,690 rows at D = 384)


class KMeansError(UsadError, ValueError):
    """Data KMeans cannot cluster (fewer rows than clusters, NaN)."""


@dataclass
class KMeansResult:
    centers: torch.Tensor       # (k, D) float32, on the data's device
    labels: torch.Tensor        # (N,) long: nearest final centre of every row
    n_iter: int                 # Lloyd steps, as scikit-learn's n_iter_
    seeds: np.ndarray           # row indices of the k-means++ seeds


def _blocks(n: int, d: int):
    rows = max(1, CHUNK_BYTES // (8 * d))
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


def column_mean(x: torch.Tensor) -> torch.Tensor:
    """(D,) float32 mean of the (N, D) rows, summed in float64."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for a, b in _blocks(*x.shape):
        total += x[a:b].double().sum(0)
    return (total / x.shape[0]).float()


def centred(x: torch.Tensor, a: int, b: int, mean: torch.Tensor) -> torch.Tensor:
    """Rows [a, b) minus the mean, in float32 (as scikit-learn's ``X -= X_mean``), then as float64."""
    return (x[a:b].float() - mean).double()


def tolerance(x: torch.Tensor, mean: torch.Tensor, tol: float) -> float:
    """scikit-learn's ``_tolerance``: tol * mean over features of the variance of X."""
    sq = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for a, b in _blocks(*x.shape):
        sq += centred(x, a, b, mean).square().sum(0)
    return float((sq / x.shape[0]).mean()) * tol


def squared_distances(x: torch.Tensor, mean: torch.Tensor, centres: torch.Tensor) -> np.ndarray:
    """(m, N) float32 squared distances of the m centred ``centres`` to every centred row, on the host.

    As scikit-learn's ``_euclidean_distances_upcast``: (-2 c.x + |c|^2) + |x|^2 in
    float64, rounded to float32, negatives clipped to 0.
    """
    c = centres.double()
    cc = c.square().sum(1)[:, None]
    out = torch.empty((len(c), x.shape[0]), dtype=torch.float32, device=x.device)
    for a, b in _blocks(*x.shape):
        block = centred(x, a, b, mean)
        out[:, a:b] = ((-2 * (c @ block.T)) + cc + block.square().sum(1)[None]).float()
    return out.clamp_min_(0).cpu().numpy()


def kmeans_plusplus(x: torch.Tensor, mean: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """Row indices of scikit-learn's k-means++ seeds (``_kmeans_plusplus`` with unit sample weights)."""
    n = x.shape[0]
    rng = np.random.RandomState(seed)
    weight = np.ones(n, dtype=np.float32)
    trials = 2 + int(np.log(k))
    seeds = [rng.choice(n, p=weight / weight.sum())]
    closest = squared_distances(x, mean, x[seeds[0]][None] - mean)  # (1, N), as scikit-learn has it: the
    potential = closest @ weight                                     # same BLAS call, the same rounding
    for _ in range(1, k):
        draws = rng.uniform(size=trials) * potential
        candidates = np.searchsorted(np.cumsum(weight * closest), draws)
        np.clip(candidates, None, n - 1, out=candidates)
        to_candidates = squared_distances(x, mean, x[torch.as_tensor(candidates, device=x.device)] - mean)
        np.minimum(closest, to_candidates, out=to_candidates)
        potentials = to_candidates @ weight.reshape(-1, 1)
        best = int(np.argmin(potentials))
        potential, closest = potentials[best], to_candidates[best]
        seeds.append(int(candidates[best]))
    return np.array(seeds, dtype=np.int64)


def assign(x: torch.Tensor, mean: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor,
           sums: torch.Tensor | None = None) -> None:
    """labels = nearest centre of every centred row (first on ties); with ``sums``, also the
    per-cluster float64 sums of the rows (k, D), from the same read of X."""
    c = centres.double()
    cc = c.square().sum(1)
    for a, b in _blocks(*x.shape):
        block = centred(x, a, b, mean)
        labels[a:b] = torch.argmin(cc - 2 * (block @ c.T), dim=1)  # |x - c|^2 - |x|^2
        if sums is not None:
            sums += torch.nn.functional.one_hot(labels[a:b], len(c)).T.double() @ block


def relocate_empty(x: torch.Tensor, mean: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor,
                   sums: torch.Tensor, counts: torch.Tensor) -> None:
    """scikit-learn's ``_relocate_empty_clusters_dense``: each empty cluster takes the row farthest
    from its centre (that row's sum moves with it; labels stay as they are until the next step)."""
    empty = torch.nonzero(counts == 0)[:, 0]
    far = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for a, b in _blocks(*x.shape):
        far[a:b] = (centred(x, a, b, mean) - centres[labels[a:b]].double()).square().sum(1)
    for cluster, row in zip(empty.tolist(), far.topk(len(empty)).indices.tolist()):
        value = centred(x, row, row + 1, mean)[0]
        sums[labels[row]] -= value
        counts[labels[row]] -= 1
        sums[cluster], counts[cluster] = value, 1


def kmeans(x: torch.Tensor, k: int, seed: int, tol: float = TOL, max_iter: int = MAX_ITER) -> KMeansResult:
    """scikit-learn's ``KMeans(k, n_init="auto", random_state=seed).fit(x)`` on (N, D) float32 rows,
    computed where ``x`` is (module docstring)."""
    n, d = x.shape
    if n < k:
        raise KMeansError(f"KMeans with {k} clusters needs at least {k} rows, got {n}")
    mean = column_mean(x)
    if not torch.isfinite(mean).all():
        raise KMeansError("KMeans: the patch tokens contain NaN or inf; check the backbone weights and the images")
    tol = tolerance(x, mean, tol)
    seeds = kmeans_plusplus(x, mean, k, seed)
    centres = x[torch.as_tensor(seeds, device=x.device)].float() - mean  # centred, float32
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    previous = torch.full_like(labels, -1)
    strict = False
    for step in range(1, max_iter + 1):
        sums = torch.zeros((k, d), dtype=torch.float64, device=x.device)
        assign(x, mean, centres, labels, sums)
        counts = torch.bincount(labels, minlength=k)
        if bool((counts == 0).any()):
            relocate_empty(x, mean, centres, labels, sums, counts)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres.double()).float()
        shift = float((moved.double() - centres.double()).square().sum())
        centres = moved
        if torch.equal(labels, previous):
            strict = True
            break
        if shift <= tol:
            break
        previous.copy_(labels)
    if not strict:
        assign(x, mean, centres, labels)
    return KMeansResult(centres + mean, labels, step, seeds)
