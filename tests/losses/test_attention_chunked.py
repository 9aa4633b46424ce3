"""The exact row-block (chunked) losses agree with the naive ones: values and gradients.

Randomised shapes (batch, heads, GQA key heads, seq, head dims differing between models),
random padding (left, right, holes, whole sequences), causal or not, teacher with or without
gradients, and a slab small enough that rows (and batch elements) are split into many blocks.
Tolerances: 1e-12 relative in float64, 1e-5 in float32, for the loss and every gradient.
"""

from __future__ import annotations

import random

import pytest
import torch

from attnkd.losses import _attention_blocks as blocks
from attnkd.losses.attention import (
    attention_ce,
    attention_kl,
    attention_output_mse,
    attention_score_mse,
    relation_kl,
    value_relation_kl,
)
from attnkd.losses.position_bias import RelativePositionBias


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads; on a busy machine BLAS thread wake-ups dominate."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


LOSSES = [
    "kl",
    "kl_reverse",
    "ce",
    "ce_linear",
    "relation",
    "value_relation",
    "score_mse",
    "output_mse",
]
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
BIASED = ("kl", "kl_reverse", "ce", "ce_linear", "score_mse", "output_mse")
"""Attention losses that take relative-position biases (MPNet); relations take none."""


def _bucket(rel: torch.Tensor) -> torch.Tensor:
    """7 buckets: offsets -3..3 exactly, farther ones share the end buckets."""
    return rel.clamp(-3, 3) + 3


def _random_mask(rng: random.Random, batch: int, seq: int) -> torch.Tensor | None:
    style = rng.choice(["none", "right", "left", "holes"])
    if style == "none":
        return None
    m = torch.ones(batch, seq, dtype=torch.bool)
    for b in range(batch):
        n = rng.randint(0, seq)  # 0: a sequence that is all padding
        if style == "right":
            m[b, n:] = False
        elif style == "left":
            m[b, : seq - n] = False
        else:
            m[b] = torch.tensor([rng.random() < 0.7 for _ in range(seq)])
    return m


def _case(seed: int, loss: str, dtype: torch.dtype):
    """Random inputs for one loss: (fn, tensors, kwargs, slab)."""
    rng = random.Random(seed * 31 + LOSSES.index(loss))
    g = torch.Generator().manual_seed(seed)
    batch, seq = rng.randint(1, 3), rng.randint(1, 24)
    heads = rng.choice([1, 2, 4])
    kv_t, kv_s = rng.choice([d for d in (1, 2, 4) if heads % d == 0]), rng.choice([1, heads])
    d_t, d_s = rng.randint(1, 7), rng.randint(1, 7)
    teacher_grad = rng.random() < 0.5

    def t(*shape, grad=True, positive=False):
        x = torch.randn(*shape, generator=g, dtype=dtype)
        return (x.exp() if positive else x).requires_grad_(grad)

    tq, tk = (
        t(batch, heads, seq, d_t, grad=teacher_grad),
        t(batch, kv_t, seq, d_t, grad=teacher_grad),
    )
    sq, sk = t(batch, heads, seq, d_s), t(batch, kv_s, seq, d_s)
    kw = {"mask": _random_mask(rng, batch, seq), "causal": rng.random() < 0.5}
    if loss in ("kl", "kl_reverse"):
        fn, ins = attention_kl, [tq, tk, sq, sk]
        kw["reverse"] = loss == "kl_reverse"
    elif loss == "ce":
        fn, ins = attention_ce, [tq, tk, sq, sk]
    elif loss == "ce_linear":
        fq, fk = t(batch, heads, seq, d_s, positive=True), t(batch, kv_s, seq, d_s, positive=True)
        fn, ins = attention_ce, [tq, tk, fq, fk]
        kw["student_kernel"] = "linear"
    elif loss == "relation":
        r = rng.choice([1, 2, 3])
        tx, sx = t(batch, seq, r * d_t, grad=teacher_grad), t(batch, seq, r * d_s)
        ty = tx if rng.random() < 0.5 else t(batch, seq, r * d_t, grad=teacher_grad)
        sy = sx if rng.random() < 0.5 else t(batch, seq, r * d_s)
        ins = [tx, ty, sx, sy]

        def fn(a, b, c, d, **k):
            return relation_kl(a, b, c, d, r, **k)
    elif loss == "value_relation":
        fn, ins = value_relation_kl, [tq, sq]
    elif loss == "score_mse":
        fn, ins = attention_score_mse, [tq, tk, sq, sk]
    else:
        tv, sv = t(batch, kv_t, seq, 3, grad=teacher_grad), t(batch, kv_s, seq, 3)
        fn, ins = attention_output_mse, [tq, tk, tv, sq, sk, sv]
    if loss in BIASED and rng.random() < 0.5:  # relative-position biases (MPNet)
        kw["teacher_bias"] = RelativePositionBias(t(7, heads, grad=teacher_grad), _bucket)
        if loss != "ce_linear" and rng.random() < 0.8:
            kw["student_bias"] = RelativePositionBias(t(7, heads), _bucket)
    if seed % 4 == 1:  # whole sequences, two batch elements per block
        slab = 2 * heads * seq * seq
    else:  # several row blocks of one batch element each
        rows = 1 if seed % 4 == 0 else max(1, seq // rng.randint(2, 4))
        slab = rows * heads * seq
    return fn, ins, kw, slab


def _loss_and_grads(fn, ins, kw, impl):
    leaves = []
    tables = [kw[k].table for k in ("teacher_bias", "student_bias") if k in kw]
    for x in [*ins, *tables]:
        if x.requires_grad and all(x is not y for y in leaves):
            leaves.append(x)
    loss = fn(*ins, impl=impl, **kw)
    return loss, torch.autograd.grad(loss, leaves)


def _assert_rel(got, want, rtol, what):
    """max |got - want| <= rtol * max |want|, with a floor of rtol/1000 (inputs are O(1)) for
    gradients that are exactly zero in exact arithmetic (e.g. a row with a single key)."""
    err = (got - want).abs().max().item()
    bound = rtol * max(want.abs().max().item(), 1e-3)
    assert err <= bound, (
        f"{what}: error {err:.3g} > {bound:.3g} (max |want| {want.abs().max():.3g})"
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed", range(8))
def test_chunked_equals_naive(seed, loss, dtype, monkeypatch):
    fn, ins, kw, slab = _case(seed, loss, dtype)
    want, want_g = _loss_and_grads(fn, ins, kw, "naive")
    monkeypatch.setattr(blocks, "SLAB_ELEMENTS", slab)
    monkeypatch.setattr(blocks, "MIN_BLOCK_ROWS", 1)
    got, got_g = _loss_and_grads(fn, ins, kw, "chunked")
    assert got.dtype == want.dtype and torch.isfinite(got)
    rtol = RTOL[dtype]
    assert abs(got.item() - want.item()) <= rtol * abs(want.item()) + 1e-300, (got, want)
    for i, (a, b) in enumerate(zip(got_g, want_g)):
        assert torch.isfinite(a).all()
        _assert_rel(a, b, rtol, f"grad {i}")


@pytest.mark.parametrize("loss", LOSSES)
def test_default_slab_longer_sequence(loss):
    """One block per batch chunk at the default slab size, float32, seq 300."""
    g = torch.Generator().manual_seed(7)
    b, h, s = 2, 4, 300
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, 250:] = False

    def t(*shape, grad=True):
        return torch.randn(*shape, generator=g).requires_grad_(grad)

    q, k, v = t(b, h, s, 16, grad=False), t(b, 2, s, 16, grad=False), t(b, 2, s, 8, grad=False)
    sq, sk, sv = t(b, h, s, 8), t(b, 2, s, 8), t(b, 2, s, 8)
    kw = {"mask": mask, "causal": loss.endswith("mse")}
    fn, ins = {
        "kl": (attention_kl, [q, k, sq, sk]),
        "kl_reverse": (lambda *a, **k: attention_kl(*a, reverse=True, **k), [q, k, sq, sk]),
        "ce": (attention_ce, [q, k, sq, sk]),
        "ce_linear": (
            lambda *a, **k: attention_ce(*a, student_kernel="linear", **k),
            [q, k, sq.detach().exp().requires_grad_(), sk.detach().exp()],
        ),
        "relation": (
            lambda a, b, c, d, **k: relation_kl(a, b, c, d, 4, **k),
            [x.transpose(1, 2).reshape(b, s, -1) for x in (q, q, sq, sq)],
        ),
        "value_relation": (value_relation_kl, [q, sq]),
        "score_mse": (attention_score_mse, [q, k, sq, sk]),
        "output_mse": (attention_output_mse, [q, k, v, sq, sk, sv]),
    }[loss]
    want, want_g = _loss_and_grads(fn, ins, kw, "naive")
    got, got_g = _loss_and_grads(fn, ins, kw, "auto")  # auto picks chunked at this length
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item())
    for a, b_ in zip(got_g, want_g):
        _assert_rel(a, b_, 1e-5, loss)


def test_gram_score_mse_without_causal_mask():
    """Non-causal TinyBERT MSE goes through the float64 Gram form (no seq^2 at all)."""
    g = torch.Generator().manual_seed(3)
    tq, tk = torch.randn(2, 4, 64, 8, generator=g), torch.randn(2, 2, 64, 8, generator=g)
    sq = torch.randn(2, 4, 64, 4, generator=g, requires_grad=True)
    sk = torch.randn(2, 4, 64, 4, generator=g, requires_grad=True)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[0, 40:] = False
    want, want_g = _loss_and_grads(attention_score_mse, [tq, tk, sq, sk], {"mask": mask}, "naive")
    got, got_g = _loss_and_grads(attention_score_mse, [tq, tk, sq, sk], {"mask": mask}, "chunked")
    assert abs(got.item() - want.item()) <= 1e-5 * want.item()
    for a, b in zip(got_g, want_g):
        _assert_rel(a, b, 1e-5, "gram grad")
    same = attention_score_mse(tq, tk, tq, tk, mask, impl="chunked")
    assert abs(same.item()) < 1e-6 * want.item()


def test_padding_with_inf_stays_finite(monkeypatch):
    monkeypatch.setattr(blocks, "SLAB_ELEMENTS", 20)
    monkeypatch.setattr(blocks, "MIN_BLOCK_ROWS", 1)
    g = torch.Generator().manual_seed(4)
    mask = torch.tensor([[False, False, True, True, True, True], [True] * 4 + [False] * 2])
    ins = [torch.randn(2, 2, 6, 3, generator=g) for _ in range(4)]
    clean = [attention_kl(*ins, mask, causal, impl="naive") for causal in (False, True)]
    for x in ins:
        x[~mask[:, None, :, None].expand_as(x)] = float("inf")
        x.requires_grad_()
    for causal, want in zip((False, True), clean):
        loss = attention_kl(*ins, mask, causal, impl="chunked")
        assert abs(loss.item() - want.item()) <= 1e-6 * want.item()
        for gr in torch.autograd.grad(loss, ins):
            assert torch.isfinite(gr).all()
            assert (gr[~mask[:, None, :, None].expand_as(gr)] == 0).all()


def test_all_padding_and_no_grad():
    q = torch.randn(2, 2, 5, 3, requires_grad=True)
    none = torch.zeros(2, 5, dtype=torch.bool)
    loss = attention_kl(q, q, q, q, none, impl="chunked")
    assert loss.item() == 0
    (g,) = torch.autograd.grad(loss, [q])
    assert (g == 0).all()
    with torch.no_grad():
        a = attention_kl(q, q.flip(2), q, q, impl="chunked")
    assert not a.requires_grad
    assert abs(a.item() - attention_kl(q, q.flip(2), q, q, impl="naive").item()) < 1e-6


def test_upstream_gradient_and_low_precision_inputs():
    g = torch.Generator().manual_seed(5)
    tq, tk = (torch.randn(1, 2, 9, 4, generator=g) for _ in range(2))
    sq = torch.randn(1, 2, 9, 4, generator=g).bfloat16().requires_grad_()
    sk = torch.randn(1, 2, 9, 4, generator=g).bfloat16().requires_grad_()
    loss = attention_kl(tq, tk, sq, sk, impl="chunked")
    assert loss.dtype == torch.float32
    (3 * loss).backward()
    ref_q, ref_k = (x.detach().float().requires_grad_() for x in (sq, sk))
    (3 * attention_kl(tq, tk, ref_q, ref_k, impl="naive")).backward()
    assert sq.grad.dtype == torch.bfloat16
    _assert_rel(sq.grad.float(), ref_q.grad.bfloat16().float(), 1e-2, "bf16 grad")


@pytest.mark.parametrize("seed", range(20))
def test_plan_covers_every_row_once(seed, monkeypatch):
    rng = random.Random(seed)
    batch, heads, seq = rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 50)
    causal, slab = rng.random() < 0.5, rng.randint(1, 4000)
    min_rows = rng.choice([1, 4, 16])
    monkeypatch.setattr(blocks, "MIN_BLOCK_ROWS", min_rows)
    seen = torch.zeros(batch, seq, dtype=torch.int64)
    for blk in blocks.plan(batch, heads, seq, causal, slab):
        seen[blk.b0 : blk.b1, blk.r0 : blk.r1] += 1
        assert blk.cols == (blk.r1 if causal else seq)
        rows = blk.r1 - blk.r0
        size = (blk.b1 - blk.b0) * heads * rows * seq
        # never more than a slab, or MIN_BLOCK_ROWS rows of one sequence if that is larger
        assert size <= max(slab, min_rows * heads * seq)
        if rows < seq:  # a partial sequence: one batch element, whole rows stay together
            assert blk.b1 - blk.b0 == 1
    assert (seen == 1).all()


def test_cpu_workspace_is_reused_and_releasable():
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(1, 2, 40, 4, generator=g), torch.randn(1, 2, 40, 4, generator=g)
    blocks.release_workspace()
    first = attention_kl(q, k, k, q, impl="chunked")
    kept = blocks._KEPT.bufs[torch.float32][0]
    again = attention_kl(q, k, k, q, impl="chunked")
    assert blocks._KEPT.bufs[torch.float32][0] is kept  # reused, not allocated again
    assert first.item() == again.item()
    blocks.release_workspace()
    assert not hasattr(blocks._KEPT, "bufs")
