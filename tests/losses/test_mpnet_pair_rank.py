"""The pair ranking term (CoSENT with the teacher's similarities as the order): against a naive
double loop, and its properties (order-only, ties ignored, right direction, finite gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkd.losses import pair_similarities, similarity_rank_loss


def _naive_rank(s: torch.Tensor, t: torch.Tensor, scale: float) -> float:
    total = 1.0
    for i in range(len(s)):
        for j in range(len(s)):
            if float(t[i]) > float(t[j]):
                total += math.exp(scale * (float(s[j]) - float(s[i])))
    return math.log(total)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_rank_loss_matches_a_naive_double_loop(scale):
    g = torch.Generator().manual_seed(0)
    s, t = torch.rand(9, generator=g) * 2 - 1, torch.rand(9, generator=g)
    t[3] = t[5]  # a tie: neither order counts
    got = float(similarity_rank_loss(s.double(), t.double(), scale=scale))
    assert got == pytest.approx(_naive_rank(s.double(), t.double(), scale), rel=1e-9)


def test_only_the_order_of_the_target_counts():
    g = torch.Generator().manual_seed(1)
    s, t = torch.rand(12, generator=g), torch.rand(12, generator=g)
    a = similarity_rank_loss(s, t)
    assert float(similarity_rank_loss(s, torch.exp(5 * t) - 3)) == pytest.approx(float(a))
    assert float(similarity_rank_loss(s, -t)) != pytest.approx(float(a))


def test_agreeing_order_scores_lower_than_reversed_and_tends_to_zero():
    t = torch.linspace(0, 1, 8)
    same, reversed_ = similarity_rank_loss(t, t), similarity_rank_loss(t, t.flip(0))
    assert float(same) < float(reversed_)
    assert float(similarity_rank_loss(t, t, scale=500.0)) < 1e-6
    assert float(similarity_rank_loss(torch.rand(5), torch.full((5,), 0.3))) == 0.0  # all tied


def test_gradient_is_finite_and_lifts_the_pair_the_teacher_ranks_higher():
    s = torch.tensor([0.5, 0.5, 0.1], requires_grad=True)
    t = torch.tensor([0.9, 0.2, 0.1])
    similarity_rank_loss(s, t).backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[0] < 0 < s.grad[1]  # descent raises pair 0 above pair 1


def test_pair_similarities_are_the_cosines_of_the_indexed_rows():
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    pairs = torch.tensor([[0, 1], [2, 3], [5, 4]])
    want = torch.stack([F.cosine_similarity(emb[a], emb[b], dim=0) for a, b in pairs.tolist()])
    assert torch.allclose(pair_similarities(emb, pairs), want, atol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="two"):
        similarity_rank_loss(torch.rand(3), torch.rand(4))
    with pytest.raises(ValueError, match="pairs"):
        pair_similarities(torch.rand(4, 2), torch.tensor([0, 1]))


def test_gold_mixing_matches_the_elementwise_form_and_keeps_the_teacher_where_gold_is_unknown():
    from attnkd.losses import mix_gold

    teacher = torch.tensor([0.9, 0.2, 0.5, 0.4])
    gold = torch.tensor([0.6, float("nan"), 1.0, 0.0])
    for xi in (0.0, 0.3, 1.0):
        got = mix_gold(teacher, gold, xi).tolist()
        want = [t if g != g else xi * g + (1 - xi) * t for t, g in zip(teacher.tolist(),
                                                                       gold.tolist())]  # fmt: skip
        assert got == pytest.approx(want)
    assert mix_gold(teacher, gold, 1.0)[1] == pytest.approx(0.2)  # no gold: the teacher's value
    with pytest.raises(ValueError, match="gt_weight"):
        mix_gold(teacher, gold, 1.5)
    with pytest.raises(ValueError, match="differ"):
        mix_gold(teacher, gold[:3], 0.5)
