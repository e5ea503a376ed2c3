"""The device paths (CUDA in production) against the reference CPU paths: run on the CPU here, and on the
GPU as well where there is one (``cuda`` cases are skipped without it).

- coreset: the dense float64 projection on a device vs scikit-learn's; the greedy with CUDA's row layout
  and its triangle-inequality skip vs the authors' literal loop;
- MACLU: KMeans in torch vs scikit-learn (seeds, centres, iterations, foreground cluster);
- metrics: the torch path vs the NumPy one and the brute-force references;
- precision (bf16 autocast) and the data loader's GPU settings.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.random_projection import SparseRandomProjection

from usad.core import metrics
from usad.core.artifacts import ArtifactError, load_artifact
from usad.core.backbones import ResNetFeatures, ViTFeatures
from usad.core.data.dataset import GPU_MAX_WORKERS, GPU_PREFETCH, make_loader
from usad.core.kmeans import kmeans
from usad.models.usad.maclu import MACLU
from usad.models.usad.branches import build_branch, expected_fit_config, fit_branch, model_path, train_branch
from usad.core.sampler import (SamplerError, _chunk_bounds, dense_projection, fit_projection, greedy_coreset,
                          greedy_coreset_naive, random_projection, rows_to_update)

from conftest import TINY_VIT_S, golden_config, require_golden
from test_metrics import dataset, naive_au_pro, naive_authors_pro_auc
from test_sampler import CASES, clustered_with_duplicates, near_tie_lattice

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


# ----------------------------------------------------------------------------- coreset: projection

@pytest.mark.parametrize("device", DEVICES)
def test_dense_projection_equals_sklearn(device):
    x = torch.randn(700, 256, generator=torch.Generator().manual_seed(1)).float()
    reference = SparseRandomProjection(eps=0.9, random_state=22).fit_transform(x.double().numpy())
    for features in (x, x.numpy(), x.to(device)):
        z = random_projection(features, 0.9, 22, chunk_size=97, device=device, dense=True)
        assert z.dtype == torch.float64 and z.device.type == device and z.shape == reference.shape
        np.testing.assert_allclose(z.cpu().numpy(), reference, rtol=1e-12, atol=1e-12)


def test_cpu_default_is_sklearn_and_cuda_default_is_dense():
    x = torch.randn(300, 200, generator=torch.Generator().manual_seed(2)).float()
    reference = torch.from_numpy(SparseRandomProjection(eps=0.9, random_state=22).fit_transform(x.double().numpy()))
    assert torch.equal(random_projection(x, 0.9, 22, device="cpu"), reference)  # bit for bit, as before
    transformer = fit_projection(300, 200, 0.9, 22)
    assert torch.equal(random_projection(x, 0.9, 22, device="cpu", dense=True), dense_projection(x, transformer, "cpu"))


def test_dense_projection_fallback_and_bad_rows():
    x = torch.randn(50, 20, generator=torch.Generator().manual_seed(3)).float()  # k > d: unprojected
    assert torch.equal(random_projection(x, 0.9, 22, device="cpu", dense=True), x.double())
    x[33, 4] = float("inf")
    with pytest.raises(SamplerError, match="row 33"):
        random_projection(x, 0.9, 22, chunk_size=8, device="cpu", dense=True)


@pytest.mark.parametrize("device", DEVICES)
def test_dense_projection_makes_the_authors_picks(device):
    x = clustered_with_duplicates(n=3000, d=256, clusters=10, duplicates=300, seed=12).float()
    authors = torch.from_numpy(SparseRandomProjection(eps=0.9, random_state=22).fit_transform(x.double().numpy()))
    dense = random_projection(x.to(device), 0.9, 22, device=device, dense=True)
    assert torch.equal(greedy_coreset(dense, 150, device=device), greedy_coreset_naive(authors.to(device), 150))


# ----------------------------------------------------------------------------- coreset: greedy

def test_chunk_bounds_cover_aligned_and_long_enough():
    for n in (1, 5, 63, 64, 65, 1000, 4097):
        for chunk, align, min_rows in ((97, 4, 64), (1, 1, 1), (4096, 4, 1024), (10, 4, 16)):
            bounds = _chunk_bounds(n, chunk, align, min_rows)
            covered = np.zeros(n, int)
            for a, b in bounds:
                covered[a:b] += 1
                assert a % align == 0 and (b - a >= min_rows or (a, b) == (0, n))
            assert covered.min() >= 1 and bounds[0][0] == 0 and bounds[-1][1] == n


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", [(4, 64), (4, 16)])
def test_greedy_with_cuda_row_layout_equals_literal_loop(case, layout):
    """CUDA's layout (rows gathered at positions congruent modulo 4, >= min_rows per norm call), run here
    on the CPU with small chunks: the gathering and scattering back must not change one pick."""
    make, n = CASES[case]
    z = make()
    align, min_rows = layout
    fast = greedy_coreset(z, n, chunk_size=37, align_rows=align, min_rows=min_rows)
    assert torch.equal(fast, greedy_coreset_naive(z, n))


def test_many_picks_on_clusters_equal_literal_loop():
    """Late picks, where most rows are skipped and the rest are gathered."""
    z = clustered_with_duplicates(n=6000, d=12, clusters=40, duplicates=200, seed=5)
    naive = greedy_coreset_naive(z, 900)
    assert torch.equal(greedy_coreset(z, 900), naive)
    assert torch.equal(greedy_coreset(z, 900, chunk_size=101, align_rows=4, min_rows=32), naive)


def test_skipped_rows_keep_their_minimum():
    """The triangle-inequality skip is sound (brute force) and skips most rows on clustered data."""
    z = clustered_with_duplicates(n=3000, d=10, clusters=25, duplicates=100, seed=6)
    picks = greedy_coreset_naive(z, 60)
    dist = torch.cdist(z, z[picks[:-1]])                       # rows x earlier picks
    min_d, nearest = dist.min(dim=1)
    new = z[picks[-1]]
    pick_dist = torch.linalg.vector_norm(z[picks[:-1]] - new, dim=1)
    left = rows_to_update(pick_dist, nearest, min_d)
    skipped = torch.ones(len(z), dtype=torch.bool)
    skipped[left] = False
    assert (torch.linalg.vector_norm(z[skipped] - new, dim=1) >= min_d[skipped]).all()
    assert len(left) < len(z) / 2


@CUDA
@pytest.mark.parametrize("k", [343, 287, 6, 1536])
def test_cuda_norms_of_gathered_rows_are_the_naive_ones(k):
    """On the GPU: a row's norm, gathered at a position congruent to its index modulo 4 in a call of
    >= 1,024 rows, equals bit for bit its norm inside the naive loop's full (N, k) difference."""
    g = torch.Generator().manual_seed(k)
    z = (torch.randn(5000, k, generator=g, dtype=torch.float64) * 10).cuda()
    last = z[17:18]
    full = torch.linalg.norm(z - last, dim=1)
    rows = torch.randperm(5000, generator=g)[:1500].sort().values.cuda()
    cls = rows % 4
    rank = torch.nn.functional.one_hot(cls, 4).cumsum(0).gather(1, cls[:, None])[:, 0] - 1
    pos = rank * 4 + cls
    n = max(int(rank.max() + 1) * 4, 1024)
    source = torch.zeros(n, dtype=torch.long, device="cuda")
    source[pos] = rows
    gathered = torch.linalg.vector_norm(z[source] - last, dim=1)[pos]
    assert torch.equal(gathered, full[rows])


@CUDA
@pytest.mark.parametrize("case", ["near-tie lattice", "clustered+duplicates", "lattice ties"])
def test_cuda_greedy_equals_literal_loop_on_cuda(case):
    make, n = CASES[case]
    z = make().cuda()
    assert torch.equal(greedy_coreset(z, n), greedy_coreset_naive(z, n))
    big = near_tie_lattice(n=20000, d=7, seed=3).cuda()
    assert torch.equal(greedy_coreset(big, 300), greedy_coreset_naive(big, 300))


# ----------------------------------------------------------------------------- MACLU: KMeans

def two_groups(n, d, seed, duplicates=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) + 3.0
    x[: n // 3] += 2.0 * rng.normal(size=d).astype(np.float32)
    if duplicates:
        x[rng.integers(0, n, duplicates)] = x[rng.integers(0, n, duplicates)]
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d, seed, duplicates", [(30000, 16, 0, 0), (20000, 64, 1, 500), (5000, 8, 2, 0),
                                                    (3001, 384, 3, 0)])
def test_torch_kmeans_equals_sklearn(device, n, d, seed, duplicates):
    x = two_groups(n, d, seed, duplicates)
    sk = KMeans(2, n_init="auto", random_state=42).fit(x)
    _, sk_seeds = kmeans_plusplus(x - x.mean(axis=0), 2, random_state=42)
    ours = kmeans(torch.from_numpy(x).to(device), 2, 42)
    assert ours.seeds.tolist() == sk_seeds.tolist()
    assert ours.n_iter == sk.n_iter_
    np.testing.assert_allclose(ours.centers.cpu().numpy(), sk.cluster_centers_, atol=1e-4)
    counts = torch.bincount(ours.labels, minlength=2).cpu().numpy()
    assert (counts == np.bincount(sk.labels_, minlength=2)).all()
    assert ours.centers.device.type == device


@pytest.mark.parametrize("x", [np.ones((50, 4), np.float32),                                    # one point: empty cluster
                               np.r_[np.ones((50, 4), np.float32), np.zeros((3, 4), np.float32)],
                               np.repeat(np.arange(15, dtype=np.float32).reshape(5, 3), 20, axis=0)])
def test_torch_kmeans_degenerate_data_equals_sklearn(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # scikit-learn: "Number of distinct clusters (1) found smaller than 2"
        sk = KMeans(2, n_init="auto", random_state=42).fit(x)
    ours = kmeans(torch.from_numpy(x), 2, 42)
    np.testing.assert_allclose(ours.centers.numpy(), sk.cluster_centers_, atol=1e-5)
    assert torch.bincount(ours.labels, minlength=2).tolist() == np.bincount(sk.labels_, minlength=2).tolist()


def test_maclu_torch_kmeans_on_golden_patch_tokens(tmp_path):
    """The golden fixture's MACLU with maclu.kmeans=torch gives the authors' (scikit-learn) clusters."""
    ref = np.load(require_golden() / "reference.npz")
    model = fit_branch("maclu", golden_config(tmp_path, "maclu.kmeans=torch"))
    np.testing.assert_allclose(model.centers.numpy(), ref["kmeans_centers"], atol=1e-4)
    assert model.fg == int(ref["fg_cluster"])


@pytest.mark.parametrize("setting, device, on_device", [("auto", "cpu", False), ("auto", "cuda", True),
                                                        ("torch", "cpu", True), ("sklearn", "cuda", False)])
def test_kmeans_setting(tmp_path, setting, device, on_device):
    cfg = golden_config(tmp_path, f"maclu.kmeans={setting}").maclu
    model = MACLU(cfg, torch.device("cpu"))
    model.device = torch.device(device)  # which implementation the setting picks there (no GPU needed)
    assert model.kmeans_on_device() is on_device


# ----------------------------------------------------------------------------- metrics

CASES_METRICS = [(seed, levels, hard) for seed in (0, 1, 2) for levels, hard in
                 [(None, False), (12, False), (None, True), (3, True)]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed, levels, hard", CASES_METRICS)
@pytest.mark.parametrize("chunk", [None, 22 * 22 * 2])
def test_device_metrics_equal_numpy(device, seed, levels, hard, chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(metrics, "DEVICE_CHUNK_PIXELS", chunk)   # two maps per chunk
    labels, masks, maps = dataset(seed, n=9, size=22, levels=levels, hard=hard)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    assert metrics.pixel_auroc(masks, maps, device=device) == metrics.pixel_auroc(masks, maps)
    assert metrics.pro_auc_usad(masks, maps, labels, device=device) == metrics.pro_auc_usad(masks, maps, labels)
    assert metrics.au_pro(masks, maps, device=device) == pytest.approx(metrics.au_pro(masks, maps), abs=1e-12)
    ours, ref = metrics.compute_all(labels, scores, masks, maps, device=device), metrics.compute_all(labels, scores, masks, maps)
    assert list(ours) == list(ref)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed, hard", [(0, False), (1, True)])
def test_device_metrics_equal_brute_force(device, seed, hard):
    labels, masks, maps = dataset(seed, n=4, size=18, levels=12, hard=hard)
    t = torch.from_numpy(maps).to(device)   # maps already on the device: no device argument needed
    assert metrics.au_pro(masks, t[:, None]) == pytest.approx(naive_au_pro(masks, maps), abs=1e-12)
    assert metrics.au_pro(masks, maps, 0.05, device=device) == pytest.approx(naive_au_pro(masks, maps, 0.05), abs=1e-12)
    assert metrics.pro_auc_usad(masks, maps, labels, device=device) == pytest.approx(
        naive_authors_pro_auc(masks, maps, labels), abs=1e-12)


def test_device_pixel_auroc_float64_below_float32_resolution():
    rng = np.random.default_rng(5)
    masks = (rng.random((4, 16, 16)) < 0.3).astype(np.uint8)
    maps = rng.random(masks.shape) + 1e-9 * masks
    assert metrics.pixel_auroc(masks, torch.from_numpy(maps), device="cpu") == metrics.pixel_auroc(masks, maps)


def test_metrics_device_choice():
    maps = np.zeros((2, 4, 4), np.float32)
    assert metrics.metrics_device(maps) is None and metrics.metrics_device(torch.from_numpy(maps)) is None
    assert metrics.metrics_device(maps, "cpu") == torch.device("cpu")


@pytest.mark.parametrize("metric", [metrics.pixel_auroc, metrics.au_pro, metrics.pro_auc_usad])
def test_device_metrics_reject_bad_input(metric):
    _, masks, maps = dataset(0)
    bad = maps.copy()
    bad[2, 5, 7] = np.nan
    with pytest.raises(metrics.MetricError, match=r"maps\[2\]"):
        metric(masks, bad, device="cpu")
    with pytest.raises(metrics.MetricError, match="both normal and anomalous"):
        metric(np.zeros_like(masks), maps, device="cpu")
    with pytest.raises(metrics.MetricError, match=r"\(6, 20, 20\).*\(6, 20, 19\)"):
        metric(masks, maps[:, :, :19], device="cpu")
    soft = masks.astype(np.float32)
    soft[1, 0, 0] = 0.5
    with pytest.raises(metrics.MetricError, match=r"masks\[1\]"):
        metric(soft, maps, device="cpu")


# ----------------------------------------------------------------------------- precision

def test_bf16_features_are_float32_and_close(tmp_path):
    g = require_golden()
    vit = ViTFeatures("vit_small_patch14_dinov2.lvd142m", 70, weights=str(g / "weights" / "maclu_vit_tiny.pth"),
                      model_kwargs=TINY_VIT_S)
    net = ResNetFeatures("resnet18", weights=str(g / "weights" / "patchcore_resnet18.pth"))
    x = torch.randn(2, 3, 70, 70, generator=torch.Generator().manual_seed(0))
    for backbone in (vit, net):
        fp32 = backbone(x)
        backbone.precision = "bf16"
        bf16 = backbone(x)
        for a, b in zip(fp32, bf16):
            assert b.dtype == torch.float32 and not torch.equal(a, b)   # really computed in bfloat16
            assert (a - b).abs().max() <= 0.05 * a.abs().max()


def test_precision_is_set_and_recorded_in_model_files(tmp_path):
    cfg = golden_config(tmp_path, "precision=bf16")
    assert build_branch("ma2patch", cfg, torch.device("cpu")).backbone.precision == "bf16"
    fp32 = golden_config(tmp_path)
    path = train_branch("ma2patch", fp32)
    assert load_artifact(path, "ma2patch", expected_fit_config("ma2patch", fp32), "")["fit_config"]["precision"] == "fp32"
    with pytest.raises(ArtifactError, match="precision: file has 'fp32', config has 'bf16'"):
        load_artifact(model_path(cfg, "ma2patch"), "ma2patch", expected_fit_config("ma2patch", cfg), "")


# ----------------------------------------------------------------------------- data loading

def test_loader_settings():
    data = list(range(10))
    cpu = make_loader(data, 4, "auto", torch.device("cpu"))
    assert (cpu.num_workers, cpu.pin_memory, cpu.persistent_workers) == (0, False, False)
    assert [b.tolist() for b in cpu] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    two = make_loader(data, 4, 2, torch.device("cpu"))
    assert (two.num_workers, two.pin_memory, two.persistent_workers, two.prefetch_factor) == (2, False, False, 2)
    gpu = make_loader(data, 4, "auto", torch.device("cuda"))  # built, not iterated: no GPU needed
    assert 1 <= gpu.num_workers <= GPU_MAX_WORKERS
    assert (gpu.pin_memory, gpu.persistent_workers, gpu.prefetch_factor) == (True, True, GPU_PREFETCH)
    assert make_loader(data, 4, 0, torch.device("cuda")).persistent_workers is False
