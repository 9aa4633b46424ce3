"""Sentence similarity-matrix KD (teachers of any width or tokenizer): against a naive loop,
properties, and the ensemble target being the weighted mean of the teachers' matrices."""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.losses import cosine_similarity_matrix, ensemble_similarity, similarity_matrix_mse


def _naive_cos(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    out = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            a, b = x[i].double(), x[j].double()
            out[i, j] = (a @ b) / (a.norm() * b.norm())
    return out


def _naive_loss(s: torch.Tensor, target: torch.Tensor) -> float:
    n, cs, total = s.shape[0], _naive_cos(s), 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += (float(cs[i, j]) - float(target[i, j])) ** 2
    return total / (n * (n - 1))


def test_cosine_matrix_and_loss_match_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 9, generator=g)
    got_cos = cosine_similarity_matrix(s).double()
    torch.testing.assert_close(got_cos, _naive_cos(s), atol=1e-6, rtol=0)
    got = similarity_matrix_mse(s, cosine_similarity_matrix(t))
    assert math.isclose(float(got), _naive_loss(s, _naive_cos(t)), rel_tol=1e-5)


def test_zero_for_the_same_geometry_in_any_width_or_scale():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 4, generator=g)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    t = torch.cat([s, torch.zeros(8, 8)], dim=1) @ q * 3.0  # rotated, wider, scaled: same cosines
    assert float(similarity_matrix_mse(s, cosine_similarity_matrix(t))) < 1e-10
    assert float(similarity_matrix_mse(s, cosine_similarity_matrix(t + 1.0))) > 1e-4


def test_gradients_finite_target_detached_and_single_sentence_is_zero():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 4, generator=g, requires_grad=True)
    t = torch.randn(5, 6, generator=g, requires_grad=True)
    loss = similarity_matrix_mse(s, ensemble_similarity([t]))
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None
    one = torch.randn(1, 4, requires_grad=True)
    assert float(similarity_matrix_mse(one, torch.ones(1, 1)).detach()) == 0.0
    zero_row = torch.zeros(3, 4)  # an all-padding sentence pools to zeros: no NaN
    assert torch.isfinite(similarity_matrix_mse(zero_row, torch.zeros(3, 3)))


def test_ensemble_target_is_the_weighted_mean_and_matches_the_sum_of_per_teacher_losses():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 10, generator=g), torch.randn(7, 3, generator=g)
    want = (2.0 * _naive_cos(a) + 1.0 * _naive_cos(b)) / 3.0
    target = ensemble_similarity([a, b], [2.0, 1.0])
    torch.testing.assert_close(target.double(), want, atol=1e-6, rtol=0)
    # the weighted ensemble loss and the weighted sum of per-teacher losses differ by a constant:
    # their gradients with respect to the student agree
    s1 = torch.randn(7, 4, generator=g, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    (3.0 * similarity_matrix_mse(s1, target)).backward()
    sa, sb = cosine_similarity_matrix(a), cosine_similarity_matrix(b)
    (2.0 * similarity_matrix_mse(s2, sa) + 1.0 * similarity_matrix_mse(s2, sb)).backward()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-6, rtol=1e-5)


def test_bad_shapes_and_weights_are_refused():
    with pytest.raises(ValueError, match="batch, width"):
        cosine_similarity_matrix(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        similarity_matrix_mse(torch.zeros(3, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="one weight"):
        ensemble_similarity([torch.zeros(2, 3)], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        ensemble_similarity([])
