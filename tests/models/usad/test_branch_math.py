"""The formulas of each branch against independent computations (SciPy, NumPy, brute force)."""

import random

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from usad.core.config import load_config
from usad.models.usad.fusion import fuse
from usad.models.usad.ma2patch import ablated_descriptors, patch_contributions
from usad.models.usad.maclu import foreground_bias_ratio, mean_replacement
from usad.core.mahalanobis import GaussianAccumulator, mahalanobis
from usad.models.usad.patchcore import locally_aware_features, nearest_bank_distance, reweighted_score, training_subset

G = torch.Generator().manual_seed(0)


def gaussian(n=40, d=6):
    x = torch.randn(n, d, generator=G, dtype=torch.float64) @ torch.randn(d, d, generator=G, dtype=torch.float64)
    acc = GaussianAccumulator(d)
    for chunk in x.split(7):  # streamed in uneven batches
        acc.update(chunk)
    return x, acc.finalize(1e-6)


def test_streamed_statistics_equal_numpy():
    x, (mu, cov, inv) = gaussian()
    np.testing.assert_allclose(mu.numpy(), x.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inv.numpy(), np.linalg.inv(np.cov(x.numpy(), rowvar=False) + 1e-6 * np.eye(6)), rtol=1e-3, atol=1e-4)


def test_mahalanobis_equals_scipy():
    x, (mu, _, inv) = gaussian()
    q = torch.randn(5, 6, generator=G)
    ours = mahalanobis(q, mu, inv).numpy()
    ref = [scipy_mahalanobis(v, mu.numpy(), inv.numpy()) for v in q.numpy()]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_singular_covariance_stays_finite(caplog):
    acc = GaussianAccumulator(10)
    acc.update(torch.randn(4, 10, generator=G))  # 4 samples, 10 dims: rank 3
    mu, _, inv = acc.finalize(1e-6, name="tiny")
    assert "singular" in caplog.text and "tiny" in caplog.text
    assert torch.isfinite(mahalanobis(torch.randn(3, 10, generator=G), mu, inv)).all()


def test_closed_form_ablation_equals_brute_force_removal():
    _, (mu, _, inv) = gaussian(60, 6)
    patches = torch.randn(2, 16, 6, generator=G)
    s_attr, c = patch_contributions(patches, mu, inv)
    for b in range(2):
        g = patches[b].mean(0)
        assert torch.allclose(s_attr[b], mahalanobis(g, mu, inv), atol=1e-5)
        for i in range(16):
            without_i = torch.cat([patches[b, :i], patches[b, i + 1:]]).mean(0)  # drop patch i, re-pool
            brute = (mahalanobis(g, mu, inv) - mahalanobis(without_i, mu, inv)).abs()
            assert torch.allclose(c[b, i], brute, atol=1e-4), (b, i)
    g = patches.mean(1)
    assert torch.allclose(ablated_descriptors(patches, g)[1, 3], torch.cat([patches[1, :3], patches[1, 4:]]).mean(0), atol=1e-6)


def test_foreground_bias_ratio_and_mean_replacement_by_hand():
    centers = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    fg = 1
    patches = torch.tensor([[[0.5, 0.0], [3.9, 0.0], [2.1, 0.0], [1.0, 0.0]]])
    r, labels = foreground_bias_ratio(patches, centers, fg)
    expected = [0.5 / (3.5 + 1e-8), 3.9 / (0.1 + 1e-8), 2.1 / (1.9 + 1e-8), 1.0 / (3.0 + 1e-8)]
    np.testing.assert_allclose(r[0].numpy(), expected, rtol=1e-5)
    assert labels[0].tolist() == [0, 1, 1, 0]
    out = mean_replacement(r, labels, fg, tau=1.14)
    bg_mean = (expected[0] + expected[3]) / 2
    np.testing.assert_allclose(out[0].numpy(), [expected[0], bg_mean, expected[2] if expected[2] <= 1.14 else bg_mean, expected[3]], rtol=1e-5)
    # no background patch in the image: nothing is replaced
    all_fg = torch.tensor([[[3.9, 0.0], [3.0, 0.0]]])
    r2, l2 = foreground_bias_ratio(all_fg, centers, fg)
    assert torch.equal(mean_replacement(r2, l2, fg, 1.14), r2)


def test_fused_score_and_map_by_hand():
    cfg = load_config().fusion
    m_obj = torch.rand(2, 12, 12, generator=G)
    m_attr = torch.rand(2, 12, 12, generator=G)
    m_pc = torch.rand(2, 12, 12, generator=G)
    s_obj, s_pc = torch.tensor([10.0, 20.0]), torch.tensor([1.5, 0.5])
    s, m_fused, m = fuse(s_obj, s_pc, m_obj, m_attr, m_pc, cfg)
    for b in range(2):
        prod = m_obj[b].numpy() * m_pc[b].numpy() * m_attr[b].numpy()
        assert s[b].item() == pytest.approx(0.01 * s_obj[b].item() + s_pc[b].item() + prod.max(), rel=1e-6)
        np.testing.assert_allclose(m_fused[b].numpy(), cv2.GaussianBlur(prod, (5, 5), 1.0), atol=1e-6)
        np.testing.assert_allclose(m[b].numpy(), prod, rtol=1e-6)


def test_training_subset_is_the_authors_global_random():
    random.seed(22)
    idx = list(range(48))
    random.shuffle(idx)
    assert training_subset(48, 0.5, 22) == idx[:24]


def test_locally_aware_features_equal_torch_modules():
    f2, f3 = torch.randn(2, 8, 30, 30, generator=G), torch.randn(2, 16, 15, 15, generator=G)
    ours = locally_aware_features(f2, f3)
    avg, resize = torch.nn.AvgPool2d(3, stride=1), torch.nn.AdaptiveAvgPool2d((30, 30))
    ref = torch.cat([resize(avg(f2)), resize(avg(f3))], 1)  # (B, C, 30, 30)
    assert ours.shape == (2, 900, 24)
    assert torch.allclose(ours[1, 30 * 4 + 7], ref[1, :, 4, 7], atol=1e-6)  # row-major patch order


def test_nearest_bank_distance_chunked_equals_brute_force():
    patches, bank = torch.randn(50, 5, generator=G), torch.randn(333, 5, generator=G)
    d, idx = nearest_bank_distance(patches, bank, chunk=64)
    full = torch.linalg.vector_norm(patches[:, None] - bank[None], dim=-1)
    assert torch.allclose(d, full.min(1).values, atol=1e-5)
    assert torch.equal(idx, full.argmin(1))


def test_reweighted_score_formula():
    bank = torch.randn(40, 6, generator=G, dtype=torch.float64).float()
    patches = torch.randn(9, 6, generator=G)
    full = torch.linalg.vector_norm(patches[:, None] - bank[None], dim=-1).double()
    d, nn = full.min(1)
    i = int(d.argmax())
    s_star = d[i]
    m_star = bank[nn[i]].double()
    order = torch.linalg.vector_norm(bank.double() - m_star, dim=1).argsort()[:3]
    assert order[0] == nn[i]
    dists = torch.linalg.vector_norm(patches[i].double() - bank[order[1:]].double(), dim=1)
    w = 1 - torch.exp(s_star / np.sqrt(6)) / torch.exp(dists / np.sqrt(6)).sum()
    ours = reweighted_score(patches, d.float(), nn, bank, k=3)
    assert ours.item() == pytest.approx((w * s_star).item(), rel=1e-4)
