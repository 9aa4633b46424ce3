"""Feature losses, sentence-embedding losses, linear CKA and the projector."""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.losses.features import (
    Projector,
    embedding_mse,
    hidden_cosine,
    hidden_mse,
    linear_cka,
    mean_pool,
    sentence_embedding_cosine,
    sentence_embedding_mse,
)


def _inputs(b=2, s=5, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(b, s, w, generator=g, dtype=torch.float64).requires_grad_(True)
    ht = torch.randn(b, s, w, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    return hs, ht, mask


def _real(mask, b, s):
    return [(i, t) for i in range(b) for t in range(s) if mask is None or mask[i, t]]


def ref_mse(hs, ht, mask=None):
    tokens = _real(mask, hs.shape[0], hs.shape[1])
    total = sum(((hs[i, t] - ht[i, t]) ** 2).sum() for i, t in tokens)
    return total / (len(tokens) * hs.shape[-1])


def ref_cos(hs, ht, mask=None):
    tokens = _real(mask, hs.shape[0], hs.shape[1])
    terms = []
    for i, t in tokens:
        a, c = hs[i, t], ht[i, t]
        terms.append(1 - (a * c).sum() / torch.sqrt((a * a).sum() * (c * c).sum()))
    return sum(terms) / len(terms)


def ref_cka(x, y):
    """HSIC form with an explicit centring matrix H = I − 11ᵀ/n: independent of the code's."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = x.double() @ x.double().T, y.double() @ y.double().T
    hsic = lambda a, b: torch.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("use_mask", [False, True])
def test_hidden_mse_and_cosine_match_reference(use_mask):
    hs, ht, mask = _inputs()
    m = mask if use_mask else None
    for fn, ref in ((hidden_mse, ref_mse), (hidden_cosine, ref_cos), (embedding_mse, ref_mse)):
        got = fn(hs, ht, m)
        want = ref(hs, ht, m)
        torch.testing.assert_close(got, want)
        (g,) = torch.autograd.grad(got, hs)
        (g_ref,) = torch.autograd.grad(want, hs)
        torch.testing.assert_close(g, g_ref)


def test_golden_values():
    hs = torch.tensor([[[1.0, 2.0], [0.0, -1.0]]], dtype=torch.float64)
    ht = torch.tensor([[[2.0, 2.0], [1.0, 1.0]]], dtype=torch.float64)
    assert hidden_mse(hs, ht).item() == pytest.approx((1 + 0 + 1 + 4) / 4)
    cos0 = 6 / (math.sqrt(5) * math.sqrt(8))
    cos1 = -1 / math.sqrt(2)
    assert hidden_cosine(hs, ht).item() == pytest.approx(1 - (cos0 + cos1) / 2)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, -1.0]])
    y = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    assert linear_cka(x, y).item() == pytest.approx(0.4505472968294226, rel=1e-6)  # numpy


def test_properties_zero_identical_masked_nan_and_empty():
    hs, ht, mask = _inputs(seed=1)
    for fn in (hidden_mse, hidden_cosine, sentence_embedding_mse, sentence_embedding_cosine):
        assert abs(fn(hs, hs.detach().clone(), mask).item()) < 1e-12
        assert fn(hs, ht, mask).item() > 0
        dirty = hs.detach().clone()
        dirty[~mask] = float("nan")
        dirty.requires_grad_(True)
        teacher = ht.clone()
        teacher[~mask] = float("inf")
        got = fn(dirty, teacher, mask)
        torch.testing.assert_close(got, fn(hs, ht, mask))
        (g,) = torch.autograd.grad(got, dirty)
        assert torch.isfinite(g).all() and (g[~mask] == 0).all()
        empty = fn(hs, ht, torch.zeros_like(mask))
        assert empty.item() == 0.0
        (g,) = torch.autograd.grad(empty, hs)
        assert (g == 0).all()


def test_teacher_is_detached():
    hs, ht, mask = _inputs(seed=2)
    ht.requires_grad_(True)
    (hidden_mse(hs, ht, mask) + hidden_cosine(hs, ht, mask)).backward()
    assert ht.grad is None and hs.grad is not None


def test_cosine_is_scale_invariant_and_opposite_gives_two():
    hs, ht, mask = _inputs(seed=3)
    torch.testing.assert_close(hidden_cosine(3.0 * hs, 0.5 * ht, mask), hidden_cosine(hs, ht, mask))
    assert hidden_cosine(hs, -hs.detach(), mask).item() == pytest.approx(2.0)


def test_sentence_embeddings_mean_pool_real_tokens():
    hs, ht, mask = _inputs(seed=4)
    pooled = torch.stack([hs[i][mask[i]].mean(0) for i in range(2)])
    torch.testing.assert_close(mean_pool(hs, mask), pooled)
    pooled_t = torch.stack([ht[i][mask[i]].mean(0) for i in range(2)])
    want = ((pooled - pooled_t) ** 2).mean()
    torch.testing.assert_close(sentence_embedding_mse(hs, ht, mask), want)
    cos = torch.nn.functional.cosine_similarity(pooled, pooled_t, dim=-1)
    torch.testing.assert_close(sentence_embedding_cosine(hs, ht, mask), (1 - cos).mean())
    # already pooled (batch, width) input
    torch.testing.assert_close(sentence_embedding_mse(pooled, pooled_t), want)
    # a sequence with no real token is left out of the mean
    partial = mask.clone()
    partial[1] = False
    only0 = ((pooled[0] - pooled_t[0]) ** 2).mean()
    torch.testing.assert_close(sentence_embedding_mse(hs, ht, partial), only0)


@pytest.mark.parametrize("n", [3, 40])  # n < d uses n x n Grams, n > d uses d x d Grams
def test_linear_cka_matches_hsic_form(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randn(n, 9, generator=g, dtype=torch.float64) + x.sum(1, keepdim=True)
    torch.testing.assert_close(linear_cka(x, y), ref_cka(x, y))


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randn(30, 7, generator=g, dtype=torch.float64)
    assert linear_cka(x, x).item() == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    shifted = 4.0 * x @ q + 3.0  # orthogonal map, isotropic scale, offset: CKA unchanged
    torch.testing.assert_close(linear_cka(shifted, y), linear_cka(x, y))
    value = linear_cka(x, y)
    assert 0.0 <= value.item() <= 1.0
    (grad,) = torch.autograd.grad(1 - value, x)
    assert torch.isfinite(grad).all()
    const = linear_cka(torch.ones(30, 5, dtype=torch.float64), y)
    assert const.item() == 0.0
    assert linear_cka(x.float(), y.float()).dtype == torch.float32


def test_linear_cka_on_masked_tokens():
    hs, ht, mask = _inputs(seed=6)
    dirty = ht.clone()
    dirty[~mask] = float("nan")
    torch.testing.assert_close(linear_cka(hs, dirty, mask), ref_cka(hs[mask], ht[mask]))
    with pytest.raises(ValueError):
        linear_cka(hs[0], ht[0], mask)
    with pytest.raises(ValueError):
        linear_cka(hs[0], ht[1, :3])


def test_projector_identity_init_and_default_init():
    same = Projector(4, 4)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(same(x), x)
    wider = Projector(4, 6)
    assert wider(x).shape == (2, 3, 6)
    assert not torch.allclose(wider.linear.weight[:4], torch.eye(4))
    loss = hidden_mse(wider(x), torch.randn(2, 3, 6))
    loss.backward()
    assert wider.linear.weight.grad is not None


def test_width_mismatch_names_projector():
    hs, ht, _ = _inputs()
    with pytest.raises(ValueError, match="Projector"):
        hidden_mse(hs, ht[..., :3])
    with pytest.raises(ValueError):
        sentence_embedding_mse(hs[:, 0], ht[:, 0], torch.ones(2, 5, dtype=torch.bool))
