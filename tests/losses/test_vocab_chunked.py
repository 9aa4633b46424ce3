"""Chunked vocabulary divergences: equal to the naive form, gradients equal to the closed forms."""

from __future__ import annotations

import pytest
import torch

from attnkd.losses import logits as logits_mod
from attnkd.losses.logits import token_divergence, token_divergence_from_hidden

KINDS = ["fkl", "rkl", "jsd", "tvd"]


def _inputs(b=2, s=6, v=11, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    zs = (2 * torch.randn(b, s, v, generator=g, dtype=dtype)).requires_grad_(True)
    zt = 2 * torch.randn(b, s, v, generator=g, dtype=dtype)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 1] = False
    return zs, zt, mask


def _both(zs, zt, upstream=1.0, **kw):
    out = []
    for impl in ("naive", "chunked"):
        loss = token_divergence(zs, zt, impl=impl, **kw)
        (g,) = torch.autograd.grad(upstream * loss, zs)
        out.append((loss, g))
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_equals_naive(kind, dtype, rtol, chunk):
    zs, zt, mask = _inputs(dtype=dtype, seed=chunk)
    for m in (None, mask):
        (l0, g0), (l1, g1) = _both(
            zs, zt, upstream=1.7, kind=kind, beta=0.3, temperature=1.5, mask=m, chunk_size=chunk
        )
        assert l1.dtype == l0.dtype
        torch.testing.assert_close(l1, l0, rtol=rtol, atol=0)
        torch.testing.assert_close(g1, g0, rtol=rtol, atol=rtol * g0.abs().max().item())


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_closed_form(kind):
    """Closed-form gradients w.r.t. student logits with temperature τ, mean over n tokens."""
    zs, zt, mask = _inputs(seed=3)
    tau, beta = 2.0, 0.3
    n = int(mask.sum())
    loss = token_divergence(zs, zt, kind, beta, tau, mask, impl="chunked", chunk_size=2)
    (g,) = torch.autograd.grad(loss, zs)
    s = torch.softmax(zs.detach() / tau, -1)
    p = torch.softmax(zt / tau, -1)
    dot = lambda a, b: (a * b).sum(-1, keepdim=True)  # noqa: E731
    if kind == "fkl":
        want = s - p
    elif kind == "rkl":
        d = s.log() - p.log()
        want = s * (d - dot(s, d))
    elif kind == "jsd":
        m = beta * p + (1 - beta) * s
        d = s.log() - m.log()
        want = (1 - beta) * s * (d - dot(s, d))
    else:
        sig = torch.sign(s - p)
        want = 0.5 * s * (sig - dot(s, sig))
    want = (tau / n) * want * mask[..., None]
    torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_overwrite_teacher_same_values_and_no_own_buffer(kind, use_mask, chunk):
    """The gradient takes the teacher logits' memory: same loss and gradient as naive."""
    zs, zt, mask = _inputs(dtype=torch.float64, seed=10 + chunk)
    m = mask if use_mask else None
    kw = dict(kind=kind, beta=0.3, temperature=1.5, mask=m)
    want = token_divergence(zs, zt, impl="naive", **kw)
    (want_g,) = torch.autograd.grad(want, zs)
    work = zt.clone()
    version = work._version
    got = token_divergence(zs, work, impl="chunked", chunk_size=chunk, overwrite_teacher=True, **kw)
    assert work._version > version  # the teacher buffer was written
    got.backward()
    assert abs(got.item() - want.item()) <= 1e-12 * abs(want.item())
    assert torch.allclose(zs.grad, want_g, rtol=1e-10, atol=1e-14)
    assert zs.grad.data_ptr() == work.data_ptr()  # the gradient lives in the teacher's memory


def test_overwrite_teacher_falls_back_when_memory_does_not_fit():
    zs, zt, _ = _inputs(dtype=torch.float64)
    want = token_divergence(zs, zt, impl="chunked")
    (want_g,) = torch.autograd.grad(want, zs)
    for teacher in (zt.float(), zt.transpose(0, 1).contiguous().transpose(0, 1)):
        keep = teacher.clone()
        got = token_divergence(zs, teacher, impl="chunked", overwrite_teacher=True)
        (g,) = torch.autograd.grad(got, zs)
        assert torch.equal(teacher, keep)  # wrong dtype / not contiguous: left alone
        assert torch.allclose(g, want_g, rtol=1e-5)
    keep = zt.clone()  # top-k gathers copies; naive never writes
    token_divergence(zs, zt, impl="chunked", top_k=3, overwrite_teacher=True).backward()
    token_divergence(zs, zt, impl="naive", overwrite_teacher=True).backward()
    assert torch.equal(zt, keep)


def test_non_contiguous_logits_and_top_k():
    zs, zt, mask = _inputs(s=7, seed=4)
    shifted_s, shifted_t = zs[:, :-1], zt[:, :-1]  # the usual next-token shift
    assert not shifted_s.is_contiguous()
    (l0, g0), (l1, g1) = _both(shifted_s, shifted_t, kind="rkl", mask=mask[:, :6], chunk_size=3)
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(g1, g0)
    (l0, g0), (l1, g1) = _both(zs, zt, kind="jsd", top_k=4, mask=mask[:, :7], chunk_size=3)
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(g1, g0)


def test_masked_nan_ignored_and_all_masked_zero():
    zs, zt, mask = _inputs(seed=5)
    dirty = zs.detach().clone()
    dirty[~mask] = float("nan")
    dirty.requires_grad_(True)
    zt = zt.clone()
    zt[~mask] = float("-inf")
    for kind in KINDS:
        loss = token_divergence(dirty, zt, kind, mask=mask, impl="chunked", chunk_size=3)
        clean = token_divergence(zs, zt, kind, mask=mask, impl="naive")
        torch.testing.assert_close(loss, clean)
        (g,) = torch.autograd.grad(loss, dirty)
        assert torch.isfinite(g).all() and (g[~mask] == 0).all()
    nothing = torch.zeros_like(mask)
    loss = token_divergence(dirty, zt, "fkl", mask=nothing, impl="chunked")
    (g,) = torch.autograd.grad(loss, dirty)
    assert loss.item() == 0.0 and (g == 0).all()


def test_upstream_gradient_and_sum_with_other_terms():
    zs, zt, _ = _inputs(seed=6)
    other = (zs**2).mean()
    total = 0.5 * token_divergence(zs, zt, "fkl", impl="chunked") + other
    total.backward()
    zs2 = zs.detach().clone().requires_grad_(True)
    (0.5 * token_divergence(zs2, zt, "fkl", impl="naive") + (zs2**2).mean()).backward()
    torch.testing.assert_close(zs.grad, zs2.grad)


def test_backward_twice_raises_and_no_grad_works():
    zs, zt, _ = _inputs(seed=7)
    loss = token_divergence(zs, zt, "fkl", impl="chunked")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()
    with torch.no_grad():
        value = token_divergence(zs, zt, "tvd", impl="chunked")
    assert value.grad_fn is None
    torch.testing.assert_close(value, token_divergence(zs, zt, "tvd", impl="naive").detach())


def test_auto_switches_on_size(monkeypatch):
    zs, zt, _ = _inputs(seed=8)
    small = token_divergence(zs, zt, "fkl", impl="auto")
    assert "Chunked" not in type(small.grad_fn).__name__
    monkeypatch.setattr(logits_mod, "AUTO_CHUNK_MIN", 10)
    big = token_divergence(zs, zt, "fkl", impl="auto")
    assert "Chunked" in type(big.grad_fn).__name__
    torch.testing.assert_close(big, small)


@pytest.mark.parametrize("use_mask", [False, True])
def test_bfloat16_gradient_dtype(use_mask):
    zs, zt, mask = _inputs(seed=9, dtype=torch.float32)
    mask = mask if use_mask else None
    zb = zs.detach().bfloat16().requires_grad_(True)
    loss = token_divergence(zb, zt.bfloat16(), "rkl", mask=mask, impl="chunked", chunk_size=2)
    loss.backward()
    assert loss.dtype == torch.float32 and zb.grad.dtype == torch.bfloat16
    ref = zs.detach().bfloat16().float().requires_grad_(True)
    token_divergence(ref, zt.bfloat16().float(), "rkl", mask=mask, impl="naive").backward()
    torch.testing.assert_close(zb.grad.float(), ref.grad, rtol=2e-2, atol=1e-3)


# ---- from hidden states ----------------------------------------------------------------------
def _hidden_case(seed=0, d_s=5, d_t=8, vocab=13, bias=True):
    g = torch.Generator().manual_seed(seed)
    f64 = {"generator": g, "dtype": torch.float64}
    hs = torch.randn(2, 6, d_s, **f64).requires_grad_(True)
    ws = torch.randn(vocab, d_s, **f64).requires_grad_(True)
    bs = torch.randn(vocab, **f64).requires_grad_(True) if bias else None
    ht = torch.randn(2, 6, d_t, **f64)
    wt = torch.randn(vocab, d_t, **f64)
    bt = torch.randn(vocab, **f64) if bias else None
    return hs, ws, bs, ht, wt, bt


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top_k", [None, 4])
def test_from_hidden_matches_explicit_logits(kind, top_k):
    hs, ws, bs, ht, wt, bt = _hidden_case(seed=len(kind))
    _, _, mask = _inputs()
    params = [hs, ws, bs]
    kw = {"kind": kind, "beta": 0.3, "temperature": 2.0, "mask": mask, "top_k": top_k}
    got = token_divergence_from_hidden(
        hs, ws, ht, wt, student_bias=bs, teacher_bias=bt, chunk_size=3, **kw
    )
    g_got = torch.autograd.grad(3.0 * got, params)
    zs = torch.nn.functional.linear(hs, ws, bs)
    zt = torch.nn.functional.linear(ht, wt, bt)
    want = token_divergence(zs, zt, impl="naive", **kw)
    g_want = torch.autograd.grad(3.0 * want, params)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-14)


def test_from_hidden_frozen_weight_no_bias_float32_and_teacher_untouched():
    hs, ws, _, ht, wt, _ = _hidden_case(seed=11, d_s=6, d_t=6, bias=False)
    hs = hs.detach().float().requires_grad_(True)
    ht, wt = ht.float().requires_grad_(True), wt.float().requires_grad_(True)
    ws = ws.detach().float()  # frozen (e.g. tied embedding not trained)
    loss = token_divergence_from_hidden(hs, ws, ht, wt, kind="fkl", chunk_size=5)
    loss.backward()
    ref_h = hs.detach().clone().requires_grad_(True)
    ref = token_divergence(ref_h @ ws.T, (ht @ wt.T).detach(), "fkl", impl="naive")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(hs.grad, ref_h.grad, rtol=1e-5, atol=1e-7)
    assert ht.grad is None and wt.grad is None


def test_from_hidden_shape_errors():
    hs, ws, bs, ht, wt, bt = _hidden_case()
    with pytest.raises(ValueError):
        token_divergence_from_hidden(hs, ws[:5], ht, wt)
    with pytest.raises(ValueError):
        token_divergence_from_hidden(hs, wt, ht, wt)
    with pytest.raises(ValueError):
        token_divergence_from_hidden(hs, ws, ht[:, :3], wt)
