"""Attention/relation losses (naive form) against an independent per-row loop, plus properties.

The reference below loops over batch, head and query row and applies the papers' definitions
(MiniLM, Wang et al. 2020; MiniLMv2, Wang et al. 2021; TinyBERT, Jiao et al. 2020) directly to
the allowed keys of each row, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.losses.attention import (
    attention_ce,
    attention_kl,
    attention_output_mse,
    attention_score_mse,
    relation_kl,
    value_relation_kl,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads; on a busy machine BLAS thread wake-ups dominate."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ independent reference


def _rows(mask, batch, seq, causal):
    """(b, i, allowed key list) for every real query row."""
    for b in range(batch):
        for i in range(seq):
            if mask is not None and not mask[b, i]:
                continue
            keys = [
                j for j in range(seq) if (mask is None or mask[b, j]) and (not causal or j <= i)
            ]
            yield b, i, keys


def _row_scores(q, k, b, h, i, keys, scale=None):
    g = q.shape[1] // k.shape[1]
    s = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    return torch.stack([q[b, h, i].double() @ k[b, h // g, j].double() * s for j in keys])


def ref_per_row(tq, tk, sq, sk, mask, causal, fn, s_scale=None):
    """Mean over heads and real rows of fn(teacher row scores, student row scores)."""
    batch, heads, seq, _ = sq.shape
    vals = [
        fn(_row_scores(tq, tk, b, h, i, keys), _row_scores(sq, sk, b, h, i, keys, s_scale))
        for b, i, keys in _rows(mask, batch, seq, causal)
        for h in range(heads)
    ]
    return torch.stack(vals).mean() if vals else torch.zeros((), dtype=torch.float64)


def kl_rows(a, b):
    p, q = torch.softmax(a, 0), torch.softmax(b, 0)
    return (p * (p.log() - q.log())).sum()


def ce_rows(a, b):
    return -(torch.softmax(a, 0) * torch.log_softmax(b, 0)).sum()


def linear_ce_rows(a, u):
    return -(torch.softmax(a, 0) * (u / u.sum()).log()).sum()


def ref_score_mse(tq, tk, sq, sk, mask, causal):
    batch, heads, seq, _ = sq.shape
    errs = [
        (_row_scores(tq, tk, b, h, i, keys) - _row_scores(sq, sk, b, h, i, keys)) ** 2
        for b, i, keys in _rows(mask, batch, seq, causal)
        for h in range(heads)
    ]
    return torch.cat(errs).mean()


def ref_output_mse(tq, tk, tv, sq, sk, sv, mask, causal):
    batch, heads, seq, _ = sq.shape
    vals = []
    for b, i, keys in _rows(mask, batch, seq, causal):
        for h in range(heads):
            outs = []
            for q, k, v in ((tq, tk, tv), (sq, sk, sv)):
                p = torch.softmax(_row_scores(q, k, b, h, i, keys), 0)
                g = q.shape[1] // v.shape[1]
                outs.append(p @ v[b, h // g, keys].double())
            vals.append(((outs[0] - outs[1]) ** 2).mean())
    return torch.stack(vals).mean()


# ------------------------------------------------------------------------------ helpers


def _qk(batch=2, heads=4, kv_heads=None, seq=7, dim=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, kv_heads or heads, seq, dim, generator=g, dtype=dtype)
    return q, k


def _mask():
    m = torch.ones(2, 7, dtype=torch.bool)
    m[0, 5:] = False  # right padding
    m[1, :2] = False  # left padding (with causal: fully masked rows)
    return m


CASES = [(None, False), (None, True), ("mask", False), ("mask", True)]


# --------------------------------------------------------------------- against reference


@pytest.mark.parametrize("masked,causal", CASES)
def test_attention_kl_matches_loop(masked, causal):
    mask = _mask() if masked else None
    tq, tk = _qk(kv_heads=2, dim=6, seed=1)  # GQA teacher, different head dims
    sq, sk = _qk(kv_heads=1, dim=4, seed=2)
    got = attention_kl(tq, tk, sq, sk, mask, causal, impl="naive")
    want = ref_per_row(tq, tk, sq, sk, mask, causal, kl_rows)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    rev = attention_kl(tq, tk, sq, sk, mask, causal, impl="naive", reverse=True)
    want_rev = ref_per_row(tq, tk, sq, sk, mask, causal, lambda a, b: kl_rows(b, a))
    torch.testing.assert_close(rev, want_rev, rtol=1e-12, atol=0)


@pytest.mark.parametrize("masked,causal", CASES)
def test_attention_ce_matches_loop(masked, causal):
    mask = _mask() if masked else None
    tq, tk = _qk(seed=3)
    sq, sk = _qk(kv_heads=2, dim=3, seed=4)
    got = attention_ce(tq, tk, sq, sk, mask, causal, impl="naive")
    torch.testing.assert_close(got, ref_per_row(tq, tk, sq, sk, mask, causal, ce_rows))
    fq, fk = sq.exp(), sk.exp()  # positive feature maps of a linear-attention student
    got = attention_ce(tq, tk, fq, fk, mask, causal, student_kernel="linear", impl="naive")
    want = ref_per_row(tq, tk, fq, fk, mask, causal, linear_ce_rows, s_scale=1.0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("masked,causal", CASES)
def test_relation_kl_matches_loop(masked, causal):
    """MiniLMv2: each model splits its own width; relation heads may equal the head count."""
    mask = _mask() if masked else None
    g = torch.Generator().manual_seed(5)
    tx = torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
    ty = torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
    sx = torch.randn(2, 7, 8, generator=g, dtype=torch.float64)
    sy = torch.randn(2, 7, 8, generator=g, dtype=torch.float64)
    for r in (1, 2, 4):

        def split(x, r=r):
            return x.reshape(2, 7, r, -1).transpose(1, 2)

        got = relation_kl(tx, ty, sx, sy, r, mask, causal, impl="naive")
        want = ref_per_row(split(tx), split(ty), split(sx), split(sy), mask, causal, kl_rows)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_value_relation_is_attention_of_v_with_itself():
    tv, _ = _qk(seed=6)
    sv, _ = _qk(dim=3, seed=7)
    mask = _mask()
    got = value_relation_kl(tv, sv, mask, impl="naive")
    torch.testing.assert_close(got, ref_per_row(tv, tv, sv, sv, mask, False, kl_rows))


@pytest.mark.parametrize("masked,causal", CASES)
def test_score_mse_matches_loop(masked, causal):
    mask = _mask() if masked else None
    tq, tk = _qk(kv_heads=2, seed=8)
    sq, sk = _qk(dim=3, seed=9)
    got = attention_score_mse(tq, tk, sq, sk, mask, causal, impl="naive")
    torch.testing.assert_close(got, ref_score_mse(tq, tk, sq, sk, mask, causal))


@pytest.mark.parametrize("masked,causal", CASES)
def test_output_mse_matches_loop(masked, causal):
    mask = _mask() if masked else None
    tq, tk = _qk(kv_heads=2, seed=10)
    tv, _ = _qk(heads=2, dim=3, seed=11)
    sq, sk = _qk(dim=4, seed=12)
    sv, _ = _qk(dim=3, seed=13)
    got = attention_output_mse(tq, tk, tv, sq, sk, sv, mask, causal, impl="naive")
    torch.testing.assert_close(got, ref_output_mse(tq, tk, tv, sq, sk, sv, mask, causal))


# ----------------------------------------------------------------------------- properties


def test_identical_models_give_zero():
    q, k = _qk(dtype=torch.float32)
    v, _ = _qk(dim=3, dtype=torch.float32)
    mask = _mask()
    for causal in (False, True):
        assert attention_kl(q, k, q, k, mask, causal, impl="naive").abs() < 1e-6
        assert attention_kl(q, k, q, k, mask, causal, impl="naive", reverse=True).abs() < 1e-6
        assert attention_score_mse(q, k, q, k, mask, causal, impl="naive") == 0
        assert attention_output_mse(q, k, v, q, k, v, mask, causal, impl="naive") == 0
    x = q.transpose(1, 2).reshape(2, 7, -1)
    assert relation_kl(x, x, x, x, 4, mask, impl="naive").abs() < 1e-6
    # cross-entropy of a distribution with itself is its entropy, not zero
    ce = attention_ce(q, k, q, k, mask, impl="naive")
    ent = ref_per_row(
        q, k, q, k, mask, False, lambda a, b: -(a.softmax(0) * a.log_softmax(0)).sum()
    )
    torch.testing.assert_close(ce.double(), ent, rtol=1e-5, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_divergences_non_negative(seed):
    tq, tk = _qk(seed=seed, dtype=torch.float32)
    sq, sk = _qk(seed=seed + 100, dtype=torch.float32)
    for causal in (False, True):
        assert attention_kl(tq, tk, sq, sk, _mask(), causal, impl="naive") >= 0
        assert attention_kl(tq, tk, sq, sk, None, causal, impl="naive", reverse=True) >= 0


def test_reverse_is_kl_with_models_swapped():
    tq, tk = _qk(seed=20)
    sq, sk = _qk(seed=21)
    rev = attention_kl(tq, tk, sq, sk, _mask(), True, impl="naive", reverse=True)
    torch.testing.assert_close(rev, attention_kl(sq, sk, tq, tk, _mask(), True, impl="naive"))


def _poisoned(x, mask):
    """Copy of x (B, H, S, D) with inf / nan written into every padded position."""
    x = x.clone()
    pad = ~mask
    x[:, :, :, 0].masked_fill_(pad[:, None, :], float("inf"))
    x[:, :, :, -1].masked_fill_(pad[:, None, :], float("nan"))
    return x


@pytest.mark.parametrize("causal", [False, True])
def test_padding_ignored_even_with_inf(causal):
    """Padded rows/keys never reach the loss or gradients (left padding: fully masked rows)."""
    mask = _mask()
    tq, tk = _qk(seed=30)
    sq, sk = _qk(seed=31)
    clean = attention_kl(tq, tk, sq, sk, mask, causal, impl="naive")
    ins = [_poisoned(x, mask).requires_grad_() for x in (tq, tk, sq, sk)]
    loss = attention_kl(*ins, mask, causal, impl="naive")
    torch.testing.assert_close(loss, clean, rtol=1e-14, atol=0)
    loss.backward()
    for x in ins:
        assert torch.isfinite(x.grad).all()
        assert (x.grad[0, :, 5:] == 0).all() and (x.grad[1, :, :2] == 0).all()
    # the same value as running each sequence alone without padding
    alone = [
        attention_kl(
            tq[:1, :, :5], tk[:1, :, :5], sq[:1, :, :5], sk[:1, :, :5], None, causal, impl="naive"
        )
        * 5,
        attention_kl(
            tq[1:, :, 2:], tk[1:, :, 2:], sq[1:, :, 2:], sk[1:, :, 2:], None, causal, impl="naive"
        )
        * 5,
    ]
    torch.testing.assert_close(loss.detach(), sum(alone) / 10, rtol=1e-12, atol=0)


def test_relation_padded_rows_excluded():
    """The MiniLMv2 pitfall: padded query rows must not enter the mean."""
    g = torch.Generator().manual_seed(40)
    tx, sx = torch.randn(1, 6, 8, generator=g), torch.randn(1, 6, 4, generator=g)
    mask = torch.tensor([[True, True, True, True, False, False]])
    padded = relation_kl(tx, tx, sx, sx, 2, mask, impl="naive")
    alone = relation_kl(tx[:, :4], tx[:, :4], sx[:, :4], sx[:, :4], 2, impl="naive")
    torch.testing.assert_close(padded, alone, rtol=1e-6, atol=0)


def test_all_padding_gives_zero_and_zero_grads():
    mask = torch.zeros(2, 7, dtype=torch.bool)
    ins = [x.requires_grad_() for x in (*_qk(seed=50), *_qk(seed=51))]
    for fn in (attention_kl, attention_ce, attention_score_mse):
        for causal in (False, True):
            loss = fn(*ins, mask, causal, impl="naive")
            assert loss == 0
            grads = torch.autograd.grad(loss, ins)
            assert all((g == 0).all() for g in grads)


def test_grads_finite_and_teacher_optional():
    tq, tk = _qk(seed=60)
    sq, sk = (x.requires_grad_() for x in _qk(seed=61))
    for fn in (attention_kl, attention_ce, attention_score_mse):
        loss = fn(tq, tk, sq, sk, _mask(), True, impl="naive")
        gq, gk = torch.autograd.grad(loss, (sq, sk))
        assert torch.isfinite(gq).all() and torch.isfinite(gk).all()
        assert gq.abs().sum() > 0


def test_golden_values():
    """Fixed input built from sines (no RNG); values from the reference loop above."""
    n = torch.arange(2 * 2 * 5 * 3, dtype=torch.float64).reshape(2, 2, 5, 3)
    tq, tk, sq, sk = (torch.sin(n * f + o) * 2 for f, o in ((0.7, 0), (1.3, 1), (0.5, 2), (1.1, 3)))
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = {
        "kl": attention_kl(tq, tk, sq, sk, mask, impl="naive"),
        "kl_causal": attention_kl(tq, tk, sq, sk, mask, True, impl="naive"),
        "ce": attention_ce(tq, tk, sq, sk, mask, impl="naive"),
        "mse": attention_score_mse(tq, tk, sq, sk, mask, impl="naive"),
    }
    want = GOLDEN
    for key, value in got.items():
        assert value.item() == pytest.approx(want[key], rel=1e-10), key


GOLDEN = {  # computed once with the reference loop (float64)
    "kl": 0.8522842944944483,
    "kl_causal": 0.4533907235306837,
    "ce": 1.538564411987832,
    "mse": 4.333655831661184,
}


# ----------------------------------------------------------------------------- validation


def test_clear_errors():
    q, k = _qk()
    q3, k3 = _qk(heads=3)
    with pytest.raises(ValueError, match="query heads"):
        attention_kl(q, k, q3, k3)
    with pytest.raises(ValueError, match="not divisible"):
        attention_kl(q, k, q, k3)  # 4 query heads, 3 key heads
    with pytest.raises(ValueError, match="impl"):
        attention_kl(q, k, q, k, impl="fast")
    with pytest.raises(ValueError, match="mask"):
        attention_kl(q, k, q, k, mask=torch.ones(2, 6, dtype=torch.bool))
    x = torch.randn(2, 7, 10)
    with pytest.raises(ValueError, match="divisible by num_relation_heads"):
        relation_kl(x, x, x, x, 4)
    with pytest.raises(ValueError, match="value head dims"):
        attention_output_mse(q, k, k, q, k, k[..., :3])
    with pytest.raises(ValueError, match="student_kernel"):
        attention_ce(q, k, q, k, student_kernel="relu")
