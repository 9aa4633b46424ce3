"""Top-k + tail-bucket divergence: equal to the full-vocabulary loss at k = V, equal to an
explicit (k + 1)-bucket formula below it, masked rows ignored, finite gradients."""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.losses.logits import token_divergence
from attnkd.losses.topk import topk_divergence

KINDS = ["fkl", "rkl", "jsd", "tvd"]


def _inputs(b=2, s=4, v=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    zs = (2 * torch.randn(b, s, v, generator=g, dtype=torch.float64)).requires_grad_(True)
    zt = 2 * torch.randn(b, s, v, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True], [True, False, False, True]])
    return zs, zt, mask


def _cache_of(zt: torch.Tensor, k: int, tau: float = 1.0):
    """What the cache stores: top-k ids and log-probs at τ, log of the remaining mass."""
    lp = torch.log_softmax(zt / tau, dim=-1)
    top = lp.topk(k, dim=-1)
    rest = lp.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    return top.indices, top.values, rest


def _ref_bucket(zs, zt, k, kind, beta, tau, mask):
    """Explicit per-token loop in float64: build the k+1 bucket probabilities, then the formula."""
    total, n = 0.0, 0
    for b in range(zs.shape[0]):
        for t in range(zs.shape[1]):
            if not mask[b, t]:
                continue
            p = torch.softmax(zt[b, t].double() / tau, -1)
            q = torch.softmax(zs[b, t].double() / tau, -1)
            idx = p.topk(k).indices.tolist()
            rest = [j for j in range(len(p)) if j not in idx]
            pb = [p[j].item() for j in idx] + [sum(p[j].item() for j in rest)]
            qb = [q[j].item() for j in idx] + [sum(q[j].item() for j in rest)]

            def kl(a, c):
                return sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, c) if x > 0)

            if kind == "fkl":
                d = kl(pb, qb)
            elif kind == "rkl":
                d = kl(qb, pb)
            elif kind == "jsd":
                m = [beta * x + (1 - beta) * y for x, y in zip(pb, qb)]
                d = beta * kl(pb, m) + (1 - beta) * kl(qb, m)
            else:
                d = 0.5 * sum(abs(x - y) for x, y in zip(pb, qb))
            total += d
            n += 1
    return tau * tau * total / n


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_k_equal_to_vocab_is_the_full_vocabulary_loss(kind, tau):
    zs, zt, mask = _inputs()
    ids, lp, tail = _cache_of(zt, zt.shape[-1], tau)
    assert torch.isneginf(tail).all()
    got = topk_divergence(zs, ids, lp, tail, kind=kind, beta=0.3, temperature=tau, mask=mask)
    want = token_divergence(zs, zt, kind=kind, beta=0.3, temperature=tau, mask=mask, impl="naive")
    assert got.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12)
    g_got = torch.autograd.grad(got, zs)[0]
    g_want = torch.autograd.grad(
        token_divergence(zs, zt, kind=kind, beta=0.3, temperature=tau, mask=mask, impl="naive"), zs
    )[0]
    assert torch.isfinite(g_got).all()
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_bucket_loss_matches_explicit_formula(kind, k):
    zs, zt, mask = _inputs(seed=1)
    ids, lp, tail = _cache_of(zt, k, tau=1.5)
    got = topk_divergence(zs, ids, lp, tail, kind=kind, beta=0.3, temperature=1.5, mask=mask)
    want = _ref_bucket(zs.detach(), zt, k, kind, 0.3, 1.5, mask)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    (g,) = torch.autograd.grad(got, zs)
    assert torch.isfinite(g).all()
    assert (g[~mask] == 0).all()  # masked tokens get no gradient


def test_below_full_kl_and_zero_for_identical():
    zs, zt, mask = _inputs(seed=2)
    for k in (1, 4):
        ids, lp, tail = _cache_of(zt, k)
        bucket = topk_divergence(zs, ids, lp, tail, mask=mask).item()
        full = token_divergence(zs, zt, mask=mask, impl="naive").item()
        assert 0 <= bucket <= full + 1e-12
        ids, lp, tail = _cache_of(zs.detach(), k)
        assert topk_divergence(zs, ids, lp, tail, mask=mask).item() == pytest.approx(0, abs=1e-12)


def test_masked_rows_may_hold_garbage_and_half_precision_cache():
    zs, zt, mask = _inputs(seed=3)
    ids, lp, tail = _cache_of(zt, 4)
    lp, tail = lp.clone(), tail.clone()
    lp[~mask] = float("nan")
    tail[~mask] = float("nan")
    got = topk_divergence(zs.float(), ids.int(), lp.half(), tail.float(), mask=mask)
    want = topk_divergence(zs, ids, _cache_of(zt, 4)[1], _cache_of(zt, 4)[2], mask=mask)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=2e-3)
    none = topk_divergence(zs, ids, lp, tail, mask=torch.zeros_like(mask))
    assert none.item() == 0.0


def test_shape_errors():
    zs, zt, _ = _inputs()
    ids, lp, tail = _cache_of(zt, 3)
    with pytest.raises(ValueError, match="tail_logp"):
        topk_divergence(zs, ids, lp, tail[:, :2])
    with pytest.raises(ValueError, match="kind"):
        topk_divergence(zs, ids, lp, tail, kind="xx")
