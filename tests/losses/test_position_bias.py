"""Relative-position score biases (MPNet) in the attention losses.

The reference here is an explicit per-(batch, head, row) loop over real keys in float64, written
from the definition ``softmax(q k^T / sqrt(d) + table[bucket(j - i)])``; both the naive and the
chunked forms are checked against it, with padding, and the bias gradients against autograd of
the loop. Relation losses (MiniLMv2) take no bias.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.losses import _attention_blocks as blocks
from attnkd.losses.attention import attention_kl, attention_score_mse, relation_kl
from attnkd.losses.position_bias import RelativePositionBias, offset_index, offset_slab


def _bucket(rel: torch.Tensor) -> torch.Tensor:
    return rel.clamp(-4, 4) + 4


def _inputs(seed: int, b=2, h=3, s=9, d_t=4, d_s=2):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    tq, tk, sq, sk = r(b, h, s, d_t), r(b, h, s, d_t), r(b, h, s, d_s), r(b, h, s, d_s)
    t_table, s_table = r(9, h) * 2, (r(9, h) * 2).requires_grad_()
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, 6:] = False  # right padding
    mask[1, :2] = False  # left padding
    return tq, tk, sq.requires_grad_(), sk.requires_grad_(), t_table, s_table, mask


def _loop_kl(tq, tk, sq, sk, t_table, s_table, mask):
    """Mean over real rows and heads of KL(P_i || S_i) over real keys, one row at a time."""
    b, h, s, _ = tq.shape
    total, rows = 0.0, 0
    for n in range(b):
        keys = [j for j in range(s) if mask[n, j]]
        for i in range(s):
            if not mask[n, i]:
                continue
            rows += 1
            for a in range(h):
                bt = torch.stack([t_table[_bucket(torch.tensor(j - i)), a] for j in keys])
                bs = torch.stack([s_table[_bucket(torch.tensor(j - i)), a] for j in keys])
                at = tq[n, a, i] @ tk[n, a, keys].T / math.sqrt(tq.shape[-1]) + bt
                as_ = sq[n, a, i] @ sk[n, a, keys].T / math.sqrt(sq.shape[-1]) + bs
                lp, lq = at.log_softmax(-1), as_.log_softmax(-1)
                total = total + (lp.exp() * (lp - lq)).sum()
    return total / (rows * h)


def test_offset_slab_is_the_toeplitz_bias():
    bias = RelativePositionBias(torch.arange(18.0).view(9, 2), _bucket)
    dense = bias.dense(6)
    for i in range(6):
        for j in range(6):
            assert torch.equal(dense[:, i, j], bias.table[_bucket(torch.tensor(j - i))])
    off = bias.by_offset(6)
    assert off.shape == (2, 11)
    assert torch.equal(offset_slab(off, 2, 5, 4), dense[:, 2:5, :4])
    assert offset_index(0, 1, 3, 6, torch.device("cpu")).tolist() == [[5, 6, 7]]


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_kl_with_biases_equals_an_explicit_loop(impl, monkeypatch):
    monkeypatch.setattr(blocks, "SLAB_ELEMENTS", 3 * 9 * 2)  # two rows per block
    monkeypatch.setattr(blocks, "MIN_BLOCK_ROWS", 1)
    tq, tk, sq, sk, t_table, s_table, mask = _inputs(0)
    tb, sb = RelativePositionBias(t_table, _bucket), RelativePositionBias(s_table, _bucket)
    got = attention_kl(tq, tk, sq, sk, mask, impl=impl, teacher_bias=tb, student_bias=sb)
    want = _loop_kl(tq, tk, sq, sk, t_table, s_table, mask)
    assert abs(got.item() - want.item()) <= 1e-12 * abs(want.item())
    got_g = torch.autograd.grad(got, [sq, sk, s_table])
    want_g = torch.autograd.grad(want, [sq, sk, s_table])
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    # the bias matters: without it the loss is another number
    plain = attention_kl(tq, tk, sq, sk, mask, impl=impl)
    assert abs(plain.item() - want.item()) > 1e-3


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_identical_models_with_identical_biases_give_zero(impl):
    tq, tk, _, _, t_table, _, mask = _inputs(1, d_s=4)
    tb = RelativePositionBias(t_table, _bucket)
    loss = attention_kl(tq, tk, tq, tk, mask, impl=impl, teacher_bias=tb, student_bias=tb)
    assert abs(loss.item()) < 1e-12
    mse = attention_score_mse(tq, tk, tq, tk, mask, impl=impl, teacher_bias=tb, student_bias=tb)
    assert abs(mse.item()) < 1e-12


def test_score_mse_non_causal_with_bias_and_padding(monkeypatch):
    """With a bias the non-causal score MSE runs the row-block kernel (no Gram form)."""
    monkeypatch.setattr(blocks, "SLAB_ELEMENTS", 3 * 9 * 3)
    monkeypatch.setattr(blocks, "MIN_BLOCK_ROWS", 1)
    tq, tk, sq, sk, t_table, s_table, mask = _inputs(2)
    t_table.requires_grad_()
    kw = {
        "mask": mask,
        "teacher_bias": RelativePositionBias(t_table, _bucket),
        "student_bias": RelativePositionBias(s_table, _bucket),
    }
    leaves = [sq, sk, t_table, s_table]
    want = attention_score_mse(tq, tk, sq, sk, impl="naive", **kw)
    got = attention_score_mse(tq, tk, sq, sk, impl="chunked", **kw)
    assert abs(got.item() - want.item()) <= 1e-12 * want.item()
    for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    # explicit: mean over heads and pairs of two real tokens of (a + bt - b - bs)^2
    d_t, d_s = tq.shape[-1], sq.shape[-1]
    a = tq @ tk.transpose(-1, -2) / math.sqrt(d_t) + kw["teacher_bias"].dense(9)
    b = sq @ sk.transpose(-1, -2) / math.sqrt(d_s) + kw["student_bias"].dense(9)
    pairs = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(a)
    ref = (a - b)[pairs].square().mean()
    assert abs(want.item() - ref.item()) <= 1e-12 * ref.item()


def test_bias_is_checked_and_relations_take_none():
    tq, tk, sq, sk, t_table, _, mask = _inputs(3)
    wrong = RelativePositionBias(torch.zeros(9, 2, dtype=torch.float64), _bucket)
    with pytest.raises(ValueError, match="2 heads; the attention has 3 query heads"):
        attention_kl(tq, tk, sq, sk, mask, teacher_bias=wrong)
    short = RelativePositionBias(torch.zeros(3, 3, dtype=torch.float64), _bucket)
    with pytest.raises(ValueError, match="outside the table's 3 rows"):
        attention_kl(tq, tk, sq, sk, mask, student_bias=short)
    with pytest.raises(TypeError):
        relation_kl(tq[:, 0], tk[:, 0], sq[:, 0], sk[:, 0], 1, teacher_bias=short)
