"""The VQ layer (Eq. 1-2) against its definition: hand-computed nearest codes, gradients and losses."""

import pytest
import torch

from usad.models.npgmf.vq import VectorQuantiser, nearest_code

BETA = 0.25


def quantiser(codebook) -> VectorQuantiser:
    vq = VectorQuantiser(len(codebook), len(codebook[0]), BETA).double()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor(codebook, dtype=torch.float64))
    return vq


def as_map(vectors) -> torch.Tensor:
    """(N, C) vectors -> (1, C, 1, N) map (the layer quantises every position)."""
    return torch.tensor(vectors, dtype=torch.float64).t()[None, :, None, :].clone()


def test_nearest_code_by_hand():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    vectors = torch.tensor([[0.9, 0.1], [0.1, 1.2], [-1.0, -1.0], [0.5, 0.0]])
    # squared distances: [0.82 0.02 3.62], [1.45 1.25 0.65], [2 5 10], [0.25 0.25 4.25] (a tie: lower index)
    assert nearest_code(vectors, codebook).tolist() == [1, 2, 0, 0]


def test_nearest_code_is_brute_force_argmin():
    g = torch.Generator().manual_seed(0)
    vectors, codebook = torch.randn(500, 8, generator=g), torch.randn(16, 8, generator=g)
    brute = torch.stack([((codebook - v) ** 2).sum(1).argmin() for v in vectors])
    assert torch.equal(nearest_code(vectors, codebook), brute)


def test_forward_values_are_the_codes_and_indices_follow_the_map_layout():
    vq = quantiser([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    out = vq(as_map([[0.9, 0.1], [0.1, 1.2], [-1.0, -1.0]]))
    assert out.indices.tolist() == [[[1, 2, 0]]]
    assert out.codes[0, :, 0].t().tolist() == [[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]


def test_losses_by_hand():
    vq = quantiser([[1.0, 0.0], [0.0, 2.0]])
    out = vq(as_map([[0.9, 0.1]]))  # q = (1, 0): difference (0.1, -0.1)
    assert out.codebook_loss.item() == pytest.approx(0.01)
    assert out.commitment_loss.item() == pytest.approx(0.01)
    assert out.loss.item() == pytest.approx(0.01 + BETA * 0.01)


def test_straight_through_gradient_copies_the_output_gradient_to_the_input():
    vq = quantiser([[1.0, 0.0], [0.0, 2.0]])
    z = as_map([[0.9, 0.1], [0.2, 1.5]]).requires_grad_(True)
    out = vq(z)
    w = torch.tensor([[3.0, -2.0], [0.5, 7.0]], dtype=torch.float64).t()[None, :, None, :]
    (out.codes * w).sum().backward()
    assert torch.equal(z.grad, w)             # d codes / d z = identity
    assert vq.codebook.grad is None or not vq.codebook.grad.any()  # the lookup itself passes nothing to E


def test_codebook_term_moves_codes_only_and_commitment_term_moves_features_only():
    vq = quantiser([[1.0, 0.0], [0.0, 2.0]])
    z = as_map([[0.9, 0.1]]).requires_grad_(True)
    vq(z).codebook_loss.backward()           # mean((e - sg z)^2) over 2 elements: grad e = (e - z)
    assert vq.codebook.grad.flatten().tolist() == pytest.approx([0.1, -0.1, 0.0, 0.0])
    assert z.grad is None or not z.grad.any()
    vq.codebook.grad = None
    z2 = as_map([[0.9, 0.1]]).requires_grad_(True)
    vq(z2).commitment_loss.backward()        # mean((z - sg e)^2): grad z = (z - e)
    assert z2.grad[0, :, 0, 0].tolist() == pytest.approx([-0.1, 0.1])
    assert vq.codebook.grad is None or not vq.codebook.grad.any()
