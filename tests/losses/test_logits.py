"""Hinton KD and token divergences (naive form) against explicit float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.losses.logits import KDLoss, hinton_kd, token_divergence

KINDS = ["fkl", "rkl", "jsd", "tvd"]


# ---- independent reference: explicit per-token loops in float64 --------------------------------
def _softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max())
    return e / e.sum()


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return sum(p[j] * (torch.log(p[j]) - torch.log(q[j])) for j in range(len(p)) if p[j] > 0)


def _ref_token(zs: torch.Tensor, zt: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    s, p = _softmax(zs), _softmax(zt)
    if kind == "fkl" or (kind == "jsd" and beta == 0.0):
        return _kl(p, s)
    if kind == "rkl" or (kind == "jsd" and beta == 1.0):
        return _kl(s, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * s
        return beta * _kl(p, m) + (1 - beta) * _kl(s, m)
    return 0.5 * sum(abs(p[j] - s[j]) for j in range(len(p)))


def ref_divergence(zs, zt, kind="fkl", beta=0.5, tau=1.0, mask=None):
    """τ² · mean over real tokens of the per-token divergence, differentiable in zs."""
    zs, zt = zs.double(), zt.detach().double()
    terms = []
    for b in range(zs.shape[0]):
        for t in range(zs.shape[1]):
            if mask is None or bool(mask[b, t]):
                terms.append(_ref_token(zs[b, t] / tau, zt[b, t] / tau, kind, beta))
    if not terms:
        return zs.new_zeros(())
    return tau**2 * sum(terms) / len(terms)


def _inputs(b=2, s=4, v=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    zs = (2 * torch.randn(b, s, v, generator=g, dtype=dtype)).requires_grad_(True)
    zt = 2 * torch.randn(b, s, v, generator=g, dtype=dtype)
    mask = torch.tensor([[True, True, False, True], [True, False, False, True]])[:b, :s]
    return zs, zt, mask


# ---- token_divergence (naive) -------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.5])
@pytest.mark.parametrize("use_mask", [False, True])
def test_naive_matches_reference(kind, tau, use_mask):
    zs, zt, mask = _inputs()
    mask = mask if use_mask else None
    got = token_divergence(zs, zt, kind, beta=0.3, temperature=tau, mask=mask, impl="naive")
    want = ref_divergence(zs, zt, kind, 0.3, tau, mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    (g_got,) = torch.autograd.grad(got, zs)
    (g_want,) = torch.autograd.grad(want, zs)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-13)


def test_golden_values():
    zs = torch.tensor([[[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]], dtype=torch.float64)
    zt = torch.tensor([[[3.0, 2.0, 1.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    gold = {  # computed with scipy.special.rel_entr / softmax
        1.0: [0.6925971600939658, 0.7087794773517374, 0.13109912501408907, 0.45490910612676777],
        2.0: [0.7633546634215589, 0.7724900480483695, 0.15617431962258357, 0.9806040558605498],
    }
    for tau, values in gold.items():
        for kind, want in zip(KINDS, values):
            for impl in ("naive", "chunked"):
                got = token_divergence(zs, zt, kind, beta=0.3, temperature=tau, impl=impl)
                assert got.item() == pytest.approx(want, rel=1e-12), (kind, tau, impl)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_for_identical_and_nonnegative(kind):
    zs, zt, mask = _inputs(seed=1)
    same = token_divergence(zs, zs.detach().clone(), kind, temperature=2.0, impl="naive")
    assert abs(same.item()) < 1e-12
    for seed in range(3):
        zs, zt, mask = _inputs(seed=seed)
        assert token_divergence(zs, zt, kind, mask=mask, impl="naive").item() > 0


def test_temperature_scaling_is_tau_squared():
    zs, zt, _ = _inputs(seed=2)
    tau = 3.0
    plain = token_divergence(zs / tau, zt / tau, "fkl", impl="naive")
    scaled = token_divergence(zs, zt, "fkl", temperature=tau, impl="naive")
    torch.testing.assert_close(scaled, tau**2 * plain)


def test_jsd_endpoints_follow_trl_convention():
    zs, zt, mask = _inputs(seed=3)
    fkl = token_divergence(zs, zt, "fkl", mask=mask, impl="naive")
    rkl = token_divergence(zs, zt, "rkl", mask=mask, impl="naive")
    torch.testing.assert_close(token_divergence(zs, zt, "jsd", beta=0.0, mask=mask), fkl)
    torch.testing.assert_close(token_divergence(zs, zt, "jsd", beta=1.0, mask=mask), rkl)
    # The mixture formula itself tends to 0 at the endpoints (documented discontinuity).
    near0 = token_divergence(zs, zt, "jsd", beta=1e-6, mask=mask, impl="naive")
    near1 = token_divergence(zs, zt, "jsd", beta=1 - 1e-6, mask=mask, impl="naive")
    assert near0.item() < 1e-4 * fkl.item() and near1.item() < 1e-4 * rkl.item()


def test_masked_tokens_ignored_even_if_nan():
    zs, zt, mask = _inputs(seed=4)
    dirty_s = zs.detach().clone()
    dirty_t = zt.clone()
    dirty_s[~mask] = float("nan")
    dirty_t[~mask] = float("inf")
    dirty_s.requires_grad_(True)
    for kind in KINDS:
        clean = token_divergence(zs, zt, kind, mask=mask, impl="naive")
        dirty = token_divergence(dirty_s, dirty_t, kind, mask=mask, impl="naive")
        torch.testing.assert_close(dirty, clean)
        (g,) = torch.autograd.grad(dirty, dirty_s)
        assert torch.isfinite(g).all() and (g[~mask] == 0).all()


def test_all_masked_gives_zero_not_nan():
    zs, zt, _ = _inputs(seed=5)
    none = torch.zeros(zs.shape[:2], dtype=torch.bool)
    for kind in KINDS:
        for impl in ("naive", "chunked"):
            loss = token_divergence(zs, zt, kind, mask=none, impl=impl)
            assert loss.item() == 0.0
            (g,) = torch.autograd.grad(loss, zs)
            assert (g == 0).all()


def test_teacher_gets_no_gradient():
    zs, zt, _ = _inputs(seed=6)
    zt.requires_grad_(True)
    token_divergence(zs, zt, "jsd", impl="naive").backward()
    assert zt.grad is None and zs.grad is not None


def test_top_k_renormalises_both_over_teacher_top_k():
    zs, zt, mask = _inputs(seed=7)
    k = 3
    idx = zt.topk(k, dim=-1).indices
    want = ref_divergence(zs.gather(-1, idx), zt.gather(-1, idx), "rkl", tau=2.0, mask=mask)
    got = token_divergence(zs, zt, "rkl", temperature=2.0, mask=mask, impl="naive", top_k=k)
    torch.testing.assert_close(got, want)
    full = token_divergence(zs, zt, "rkl", mask=mask, impl="naive")
    torch.testing.assert_close(token_divergence(zs, zt, "rkl", mask=mask, top_k=7), full)
    (g,) = torch.autograd.grad(got, zs)
    outside = torch.ones_like(g, dtype=torch.bool).scatter_(-1, idx, False)
    assert (g[outside] == 0).all()


def test_teacher_minus_inf_logits_are_zero_probability():
    zs, zt, _ = _inputs(seed=8)
    zt = zt.clone()
    zt[..., :2] = float("-inf")
    for kind in ["fkl", "jsd", "tvd"]:
        for impl in ("naive", "chunked"):
            got = token_divergence(zs, zt, kind, beta=0.4, impl=impl)
            want = ref_divergence(zs, zt, kind, 0.4)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
            (g,) = torch.autograd.grad(got, zs)
            assert torch.isfinite(g).all()


def test_bfloat16_inputs_computed_in_float32():
    zs, zt, mask = _inputs(seed=9, dtype=torch.float32)
    zb = zs.detach().bfloat16().requires_grad_(True)
    loss = token_divergence(zb, zt.bfloat16(), "fkl", mask=mask, impl="naive")
    assert loss.dtype == torch.float32
    want = ref_divergence(zb.float(), zt.bfloat16().float(), "fkl", mask=mask)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "kl"}, {"beta": 1.5}, {"temperature": 0.0}, {"impl": "fast"}, {"top_k": 0}],
)
def test_bad_arguments_raise(kwargs):
    zs, zt, _ = _inputs()
    with pytest.raises(ValueError):
        token_divergence(zs, zt, **kwargs)


def test_shape_errors():
    zs, zt, _ = _inputs()
    with pytest.raises(ValueError):
        token_divergence(zs, zt[:, :3])
    with pytest.raises(ValueError):
        token_divergence(zs[0], zt[0])
    with pytest.raises(ValueError):
        token_divergence(zs, zt, mask=torch.ones(2, 3, dtype=torch.bool))


# ---- Hinton KD ----------------------------------------------------------------------------------
def _ref_ce(zs, labels, keep):
    terms = []
    for b in range(zs.shape[0]):
        for t in range(zs.shape[1]):
            if keep[b, t]:
                z = zs[b, t].double()
                lse = z.max() + torch.log(torch.exp(z - z.max()).sum())
                terms.append(lse - z[int(labels[b, t])])
    return sum(terms) / max(len(terms), 1)


def test_hinton_golden_2d():
    zs = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], dtype=torch.float64)
    zt = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    out = hinton_kd(zs, zt, labels=torch.tensor([2, 0]), alpha=0.5, temperature=2.0)
    assert isinstance(out, KDLoss)
    assert out.kd.item() == pytest.approx(0.7633546634215589, rel=1e-12)
    assert out.ce.item() == pytest.approx(0.5058682848905544, rel=1e-12)
    assert out.total.item() == pytest.approx(0.6346114741560567, rel=1e-12)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_hinton_3d_matches_reference_with_mask_and_ignore_index(tau):
    zs, zt, mask = _inputs(seed=10)
    labels = torch.randint(0, 7, mask.shape, generator=torch.Generator().manual_seed(0))
    labels[0, 1] = -100
    out = hinton_kd(zs, zt, labels, alpha=0.3, temperature=tau, mask=mask)
    kd = ref_divergence(zs, zt, "fkl", tau=tau, mask=mask)
    ce = _ref_ce(zs, labels, mask & (labels != -100))
    torch.testing.assert_close(out.kd, kd)
    torch.testing.assert_close(out.ce, ce)
    torch.testing.assert_close(out.total, 0.3 * kd + 0.7 * ce)
    (g,) = torch.autograd.grad(out.total, zs)
    (g_ref,) = torch.autograd.grad(0.3 * kd + 0.7 * ce, zs)
    torch.testing.assert_close(g, g_ref)


def test_hinton_tau_squared_applied_without_labels():
    """Pitfall: a popular KD loss applies τ² only when a hard-label weight is set."""
    zs, zt, _ = _inputs(seed=11)
    tau = 4.0
    out = hinton_kd(zs, zt, labels=None, alpha=0.25, temperature=tau)
    assert out.ce is None
    torch.testing.assert_close(out.total, out.kd)  # alpha ignored without labels
    torch.testing.assert_close(out.kd, ref_divergence(zs, zt, "fkl", tau=tau))


def test_hinton_3d_normalises_over_vocab_not_seq():
    """Pitfall: a popular KD loss normalises 3-D logits over the wrong dimension."""
    zs, zt, _ = _inputs(b=1, s=4, v=5, seed=12)
    got = hinton_kd(zs, zt, temperature=1.0).kd
    per_token = ref_divergence(zs, zt, "fkl")
    wrong_dim = ref_divergence(zs.transpose(1, 2), zt.transpose(1, 2), "fkl")
    torch.testing.assert_close(got, per_token)
    assert abs(got.item() - wrong_dim.item()) > 1e-3


def test_hinton_ignored_and_masked_rows_may_hold_nan():
    zs, zt, mask = _inputs(seed=13)
    labels = torch.zeros(mask.shape, dtype=torch.long)
    dirty = zs.detach().clone()
    dirty[~mask] = float("nan")
    dirty.requires_grad_(True)
    out = hinton_kd(dirty, zt, labels, mask=mask)
    assert torch.isfinite(out.total)
    out.total.backward()
    assert torch.isfinite(dirty.grad).all() and (dirty.grad[~mask] == 0).all()
    every = torch.full(mask.shape, -100)
    empty = hinton_kd(zs, zt, every, alpha=0.5, mask=mask)
    assert empty.ce.item() == 0.0 and torch.isfinite(empty.total)


def test_hinton_2d_with_row_mask():
    zs, zt, _ = _inputs(b=1, s=4, seed=14)
    zs2 = zs[0].detach().requires_grad_(True)
    rows = torch.tensor([True, False, True, True])
    out = hinton_kd(zs2, zt[0], temperature=2.0, mask=rows)
    want = ref_divergence(zs2[None], zt, "fkl", tau=2.0, mask=rows[None])
    torch.testing.assert_close(out.kd, want)
    with pytest.raises(ValueError):
        hinton_kd(zs2, zt[0], alpha=1.5)
    assert math.isfinite(out.total.item())
