"""Chunked losses under random upstream gradients and random probes, not only ``loss.backward()``.

The chunked forms form their gradients in the forward pass and scale them by the upstream
gradient in backward, with a shortcut when it is exactly 1 (the usual ``loss.backward()``). In a
run a term's upstream gradient is its weight (and gradient scaling or accumulation divides it),
so here every chunked loss gets a random upstream gradient and its full input gradients are
compared with the naive form's; and each chunked loss is checked against finite differences
along random input probes with a random output weight (float64), independently of the naive
form (``torch.autograd.gradcheck(fast_mode=True)`` for the attention losses; an explicit probe
for the vocabulary losses, which allow one backward per forward).
"""

from __future__ import annotations

import pytest
import torch
from test_attention_chunked import LOSSES, _assert_rel, _case

from attnkd.losses import _attention_blocks as blocks
from attnkd.losses.logits import token_divergence, token_divergence_from_hidden

VOCAB_KINDS = ["fkl", "rkl", "jsd", "tvd"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """Several row blocks per sequence, so block boundaries are crossed."""
    monkeypatch.setattr(blocks, "MIN_BLOCK_ROWS", 1)


def _leaves(ins, kw):
    tables = [kw[k].table for k in ("teacher_bias", "student_bias") if k in kw]
    out = []
    for x in [*ins, *tables]:
        if x.requires_grad and all(x is not y for y in out):
            out.append(x)
    return out


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed", range(4))
def test_random_upstream_gradient_chunked_equals_naive(seed, loss, monkeypatch):
    fn, ins, kw, slab = _case(seed + 100, loss, torch.float64)
    leaves = _leaves(ins, kw)
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn((), generator=g, dtype=torch.float64) * 3  # negative half the time
    want = torch.autograd.grad(fn(*ins, impl="naive", **kw), leaves, grad_outputs=upstream)
    monkeypatch.setattr(blocks, "SLAB_ELEMENTS", slab)
    got = torch.autograd.grad(fn(*ins, impl="chunked", **kw), leaves, grad_outputs=upstream)
    for i, (a, b) in enumerate(zip(got, want)):
        _assert_rel(a, b, 1e-12, f"grad {i} (upstream {upstream.item():.3g})")


@pytest.mark.parametrize("loss", LOSSES)
def test_chunked_term_inside_a_weighted_sum(loss, monkeypatch):
    """As in a training step: weight * chunked loss + another term, one backward."""
    fn, ins, kw, slab = _case(7, loss, torch.float64)
    leaves = _leaves(ins, kw)
    other = sum((x**2).mean() for x in leaves)

    def total(impl):
        return -0.37 * fn(*ins, impl=impl, **kw) + 2.0 * other

    want = torch.autograd.grad(total("naive"), leaves, retain_graph=True)
    monkeypatch.setattr(blocks, "SLAB_ELEMENTS", slab)
    got = torch.autograd.grad(total("chunked"), leaves, retain_graph=True)
    for i, (a, b) in enumerate(zip(got, want)):
        _assert_rel(a, b, 1e-12, f"grad {i}")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed", range(2))
def test_gradcheck_random_probes_chunked(seed, loss, monkeypatch):
    fn, ins, kw, slab = _case(seed + 200, loss, torch.float64)
    monkeypatch.setattr(blocks, "SLAB_ELEMENTS", slab)
    leaves = _leaves(ins, kw)
    tables = {k: kw[k].table for k in ("teacher_bias", "student_bias") if k in kw}

    def f(*xs):
        swap = dict(zip(map(id, leaves), xs))
        args = [swap.get(id(x), x) for x in ins]
        kw2 = dict(kw)
        for k, t in tables.items():
            kw2[k] = type(kw[k])(swap.get(id(t), t), kw[k].bucket)
        return fn(*args, impl="chunked", **kw2)

    assert torch.autograd.gradcheck(f, tuple(leaves), fast_mode=True, atol=1e-7, rtol=1e-5)


def _probe(f, xs: tuple[torch.Tensor, ...], seed: int, probes: int = 3, eps: float = 1e-6):
    """For random directions u and a random upstream weight w: the backward of ``w * f`` along
    u equals w times the central finite difference of f along u (float64; a fresh forward per
    backward, since the chunked vocabulary loss allows one backward per forward)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(probes):
        u = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in xs]
        w = torch.randn((), generator=g, dtype=torch.float64) * 3
        grads = torch.autograd.grad(f(*xs), xs, grad_outputs=w)
        analytic = sum((gr * d).sum() for gr, d in zip(grads, u))
        with torch.no_grad():
            plus = f(*(x + eps * d for x, d in zip(xs, u)))
            minus = f(*(x - eps * d for x, d in zip(xs, u)))
        numeric = w * (plus - minus) / (2 * eps)
        assert abs(analytic.item() - numeric.item()) <= 1e-6 * max(abs(numeric.item()), 1e-3), (
            analytic, numeric)  # fmt: skip


def _vocab_inputs(seed, b=2, s=5, v=9):
    g = torch.Generator().manual_seed(seed)
    zs = (2 * torch.randn(b, s, v, generator=g, dtype=torch.float64)).requires_grad_(True)
    zt = 2 * torch.randn(b, s, v, generator=g, dtype=torch.float64)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, 3:] = False
    return zs, zt, mask


@pytest.mark.parametrize("kind", VOCAB_KINDS)
def test_gradcheck_random_probes_token_divergence(kind):
    zs, zt, mask = _vocab_inputs(len(kind))

    def f(z):
        return token_divergence(z, zt, kind, beta=0.3, temperature=1.5, mask=mask,
                                impl="chunked", chunk_size=3)  # fmt: skip

    _probe(f, (zs,), seed=len(kind))


@pytest.mark.parametrize("kind", VOCAB_KINDS)
def test_gradcheck_random_probes_from_hidden(kind):
    g = torch.Generator().manual_seed(5)
    f64 = {"dtype": torch.float64}
    hs = torch.randn(2, 4, 6, generator=g, **f64).requires_grad_(True)
    ws = torch.randn(9, 6, generator=g, **f64).requires_grad_(True)
    bs = torch.randn(9, generator=g, **f64).requires_grad_(True)
    ht, wt = torch.randn(2, 4, 5, generator=g, **f64), torch.randn(9, 5, generator=g, **f64)
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])

    def f(h, w, b):
        return token_divergence_from_hidden(h, w, ht, wt, student_bias=b, kind=kind, beta=0.3,
                                            mask=mask, chunk_size=3)  # fmt: skip

    _probe(f, (hs, ws, bs), seed=len(kind))
