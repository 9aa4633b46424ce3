"""Loss terms for causal LMs: the 'logits' term against token_divergence and a naive formula,
causal masking in every attention/relation term, and relation widths under GQA."""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.capture import Tap, Taps
from attnkd.config.schema import LossTermConfig
from attnkd.losses import attention as att
from attnkd.losses.logits import token_divergence
from attnkd.losses.terms import TERMS, TermError, build_terms, collect_taps
from attnkd.models.adapters import AttentionGeometry

B, S = 3, 12
# Teacher: 4 query heads, 2 kv heads, head_dim 8 (q 32 wide, k/v 16); student: head_dim 4.
TG = AttentionGeometry(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8,
                       causal=True)  # fmt: skip
SG = AttentionGeometry(num_layers=1, hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=4,
                       causal=True)  # fmt: skip
SMOL = AttentionGeometry(num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
                         causal=True)  # fmt: skip
"""SmolLM2-135M's attention layout."""


def _mask() -> torch.Tensor:
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, -4:] = False  # right padding
    mask[2, :3] = False  # left padding (decoder batches)
    return mask


def _qkv_taps(g: AttentionGeometry, layer: int, seed: int, grad: bool = False) -> Taps:
    gen = torch.Generator().manual_seed(seed)
    widths = {"q": g.num_heads * g.head_dim, "k": g.num_kv_heads * g.head_dim}
    widths["v"] = widths["k"]
    tensors = {}
    for kind, w in widths.items():
        x = torch.randn(B, S, w, generator=gen)
        tensors[Tap(kind, layer)] = x.requires_grad_(grad)
    return Taps(tensors)


def _term(name: str, tg=TG, sg=SG, **kw):
    return TERMS.get(name).cls(LossTermConfig(name=name, **kw), tg, sg)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, w = x.shape
    return x.reshape(b, s, heads, w // heads).permute(0, 2, 1, 3)


# --- the 'logits' term -------------------------------------------------------------------


def _logit_taps(vocab: int, seed: int, grad: bool = False) -> Taps:
    z = torch.randn(B, S, vocab, generator=torch.Generator().manual_seed(seed)) * 2
    return Taps({Tap("logits", 0): z.requires_grad_(grad)})


def _naive_fkl(zs, zt, tau, mask):
    """tau^2 * mean over real tokens of sum_v p_T (log p_T - log p_S), in float64."""
    lt = torch.log_softmax(zt.double() / tau, -1)
    ls = torch.log_softmax(zs.double() / tau, -1)
    per = (lt.exp() * (lt - ls)).sum(-1)
    return tau * tau * per[mask].mean()


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd", "tvd"])
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_logits_term_equals_token_divergence(kind, impl):
    mask = _mask()
    t, s = _logit_taps(50, 1), _logit_taps(50, 2, grad=True)
    term = _term("logits", kind=kind, beta=0.3, temperature=2.0, impl=impl, teacher_layer=-2)
    values = term(t, s, mask)
    assert set(values) == {kind}
    zs, zt = s.get("logits"), t.get("logits")
    want = token_divergence(zs, zt, kind=kind, beta=0.3, temperature=2.0, mask=mask, impl=impl)
    torch.testing.assert_close(values[kind], want, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(values[kind], zs)
    (want_grad,) = torch.autograd.grad(want, zs)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
    assert grad[~mask].abs().max() == 0 and grad[mask].abs().max() > 0
    if kind == "fkl":
        torch.testing.assert_close(values[kind].double(), _naive_fkl(zs, zt, 2.0, mask))


def test_logits_term_top_k_taps_and_label():
    mask = _mask()
    t, s = _logit_taps(50, 3), _logit_taps(50, 4)
    term = _term("logits", kind="rkl", top_k=5, teacher_layer=0, student_layer=0)
    zs, zt = s.get("logits"), t.get("logits")
    want = token_divergence(zs, zt, kind="rkl", mask=mask, top_k=5)
    torch.testing.assert_close(term(t, s, mask)["rkl"], want, rtol=0, atol=0)
    assert term.label == "logits"
    assert term.taps() == ([Tap("logits", 0)], [Tap("logits", 0)])
    zero = _term("logits", kind="jsd")(t, t, mask)["jsd"]  # identical models
    assert abs(float(zero)) < 1e-6


def test_logits_term_settings_fail_at_build_naming_the_field():
    cases = [
        ({"kind": "kl"}, "kind", "unknown divergence 'kl'"),
        ({"beta": 1.5}, "beta", r"beta must be in \[0, 1\]"),
        ({"temperature": 0.0}, "temperature", "temperature must be > 0"),
        ({"top_k": 0}, "top_k", "top_k must be >= 1"),
        ({"impl": "fast"}, "impl", "impl must be"),
    ]
    for kw, field, message in cases:
        with pytest.raises(TermError, match=message) as info:
            _term("logits", **kw)
        assert info.value.field == field


def test_logits_term_needs_one_vocabulary():
    term = _term("logits")
    with pytest.raises(TermError, match="teacher has 50 tokens, student 40"):
        term(_logit_taps(50, 1), _logit_taps(40, 2), _mask())
    tg = AttentionGeometry(**{**vars(TG), "vocab_size": 50})
    sg = AttentionGeometry(**{**vars(SG), "vocab_size": 40})
    with pytest.raises(TermError, match="teacher has 50 tokens, student 40") as info:
        _term("logits", tg, sg)
    assert info.value.field == "name"
    _term("logits", tg, AttentionGeometry(**{**vars(SG), "vocab_size": 50}))


def test_logits_term_on_tiny_llamas_is_zero_on_itself_and_trains_the_student():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    teacher, student = LlamaForCausalLM(config).eval(), LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 60, (B, S))
    mask = _mask()
    with torch.no_grad():
        zt = teacher(input_ids=ids, attention_mask=mask.long()).logits
    zs = student(input_ids=ids, attention_mask=mask.long()).logits
    t, s = Taps({Tap("logits", 0): zt}), Taps({Tap("logits", 0): zs})
    term = _term("logits", kind="tvd")
    assert abs(float(term(t, t, mask)["tvd"])) < 1e-6
    loss = term(t, s, mask)["tvd"]
    assert loss > 0
    loss.backward()
    assert student.lm_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_build_terms_collects_logits_taps_with_the_others():
    cfgs = [
        LossTermConfig(name="logits", kind="fkl"),
        LossTermConfig(name="relation", relations=["qq", "vv"], relation_heads=2),
    ]
    terms = build_terms(cfgs, TG, SG)
    t_taps, s_taps = collect_taps(terms)
    assert t_taps == [Tap("logits", 0), Tap("q", 1), Tap("v", 1)]
    assert s_taps == [Tap("logits", 0), Tap("q", 0), Tap("v", 0)]
    assert [t.label for t in terms] == ["logits", "relation@1>0"]


# --- causal attention and relation terms -------------------------------------------------


def _naive_causal_relation_kl(tx, ty, sx, sy, heads, mask):
    """Mean over relation heads and real rows of KL(T || S), keys real and j <= i, float64."""
    allowed = mask[:, None, None, :] & torch.ones(S, S, dtype=torch.bool).tril()

    def log_rel(x, y):
        xr, yr = _heads(x.double(), heads), _heads(y.double(), heads)
        scores = xr @ yr.transpose(-1, -2) / math.sqrt(xr.shape[-1])
        return scores.masked_fill(~allowed, -math.inf).log_softmax(-1)

    lt, ls = log_rel(tx, ty), log_rel(sx, sy)
    real = mask[:, None, :, None] & allowed  # padded rows (even left ones) contribute nothing
    kl = torch.where(real, lt.exp() * (lt - ls), 0.0).sum(-1)
    return kl[mask[:, None, :].expand_as(kl)].mean()


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_relation_term_is_causal_for_decoders(impl):
    mask = _mask()
    t, s = _qkv_taps(TG, 1, seed=1), _qkv_taps(SG, 0, seed=2)
    term = _term("relation", relations=["qq", "kk", "vv"], relation_heads=2, impl=impl)
    values = term(t, s, mask)
    for r in ("qq", "kk", "vv"):
        x = r[0]
        args = (t.get(x, 1), t.get(x, 1), s.get(x, 0), s.get(x, 0), 2)
        causal = att.relation_kl(*args, mask=mask, causal=True, impl=impl)
        full = att.relation_kl(*args, mask=mask, causal=False, impl=impl)
        torch.testing.assert_close(values[r], causal, rtol=0, atol=0)
        assert abs(float(values[r] - full)) > 1e-3
        torch.testing.assert_close(values[r].double(), _naive_causal_relation_kl(*args, mask),
                                   atol=1e-6, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_headwise_terms_are_causal_for_decoders(impl):
    mask = _mask()
    t, s = _qkv_taps(TG, 1, seed=3), _qkv_taps(SG, 0, seed=4)
    tq, tk, tv = (_heads(t.get(k, 1), 4 if k == "q" else 2) for k in "qkv")
    sq, sk, sv = (_heads(s.get(k, 0), 4 if k == "q" else 2) for k in "qkv")
    cases = {
        "attention": ("at", att.attention_kl, (tq, tk, sq, sk)),
        "value_relation": ("vr", att.value_relation_kl, (tv, sv)),
        "attention_mse": ("score_mse", att.attention_score_mse, (tq, tk, sq, sk)),
    }
    for name, (key, fn, args) in cases.items():
        value = _term(name, impl=impl)(t, s, mask)[key]
        causal = fn(*args, mask=mask, causal=True, impl=impl)
        full = fn(*args, mask=mask, causal=False, impl=impl)
        torch.testing.assert_close(value, causal, rtol=0, atol=0)
        assert abs(float(value - full)) > 1e-3, name


def test_encoder_geometries_stay_bidirectional():
    enc_t = AttentionGeometry(**{**vars(TG), "causal": False})
    enc_s = AttentionGeometry(**{**vars(SG), "causal": False})
    mask = _mask()
    t, s = _qkv_taps(TG, 1, seed=5), _qkv_taps(SG, 0, seed=6)
    value = _term("relation", enc_t, enc_s, relations=["qq"], relation_heads=2)(t, s, mask)["qq"]
    args = (t.get("q", 1), t.get("q", 1), s.get("q", 0), s.get("q", 0), 2)
    torch.testing.assert_close(value, att.relation_kl(*args, mask=mask), rtol=0, atol=0)


def test_teacher_and_student_must_agree_on_causality():
    encoder = AttentionGeometry(**{**vars(SG), "causal": False})
    for name in ("relation", "attention", "value_relation", "attention_mse"):
        with pytest.raises(TermError, match="causal \\(decoder\\) teacher.*bidirectional") as info:
            _term(name, TG, encoder, relation_heads=2)
        assert info.value.field == "name"
    _term("hidden_mse", TG, AttentionGeometry(**{**vars(TG), "causal": False}))  # no attention


# --- relation widths under grouped-query attention ---------------------------------------


def test_gqa_relation_widths_are_checked_per_relation():
    student = AttentionGeometry(num_layers=10, hidden_size=576, num_heads=9, num_kv_heads=3,
                                head_dim=64, causal=True)  # fmt: skip
    _term("relation", SMOL, student, relations=["qq"])  # 576 / 9 heads
    with pytest.raises(TermError, match="relation 'kk': teacher k width 192 is not divisible by "
                       "relation_heads=9; values that fit .*: \\[1, 2, 3, 4, 6, 8, 12, 16, 24, "
                       "32, 48, 64, 96, 192\\]") as info:  # fmt: skip
        _term("relation", SMOL, student)  # the default: qq, kk, vv with the 9 teacher heads
    assert info.value.field == "relation_heads"
    for heads in (3, 64):
        term = _term("relation", SMOL, student, relation_heads=heads)
        assert term.heads == heads
    with pytest.raises(TermError, match="relation 'vv': teacher v width 192 .*relation_heads=9"):
        _term("relation", SMOL, student, relations=["qq", "vv"])


def test_gqa_relation_checks_name_the_student_and_unequal_qk_widths():
    narrow = AttentionGeometry(num_layers=4, hidden_size=192, num_heads=6, num_kv_heads=2,
                               head_dim=32, causal=True)  # fmt: skip
    fits = r"values that fit .*: \[1, 2, 4, 8, 16, 32, 64\]"
    with pytest.raises(TermError, match=f"relation 'kk': student k width 64 .*=3; {fits}"):
        _term("relation", SMOL, narrow, relation_heads=3)
    gqa = r"\(grouped-query attention: 9 query heads, 3 kv heads\)"
    with pytest.raises(
        TermError, match=f"relation 'qk': teacher q width 576 != k width 192 {gqa}"
    ) as info:
        _term("relation", SMOL, narrow, relations=["qk"], relation_heads=2)
    assert info.value.field == "relations"


def test_gqa_relation_term_runs_on_kv_widths():
    mask = _mask()
    t, s = _qkv_taps(TG, 1, seed=7), _qkv_taps(SG, 0, seed=8)
    term = _term("relation", relations=["kk"], relation_heads=4)  # k: 16 and 8 wide
    value = term(t, s, mask)["kk"]
    want = _naive_causal_relation_kl(t.get("k", 1), t.get("k", 1), s.get("k", 0), s.get("k", 0),
                                     4, mask)  # fmt: skip
    torch.testing.assert_close(value.double(), want, atol=1e-6, rtol=1e-5)


def test_value_relation_needs_equal_kv_heads():
    one_kv = AttentionGeometry(**{**vars(SG), "num_kv_heads": 1})
    with pytest.raises(TermError, match="teacher has 2 kv heads, student 1.*relations \\[vv\\]"):
        _term("value_relation", TG, one_kv)
    _term("attention", TG, one_kv)  # attention handles GQA per model
