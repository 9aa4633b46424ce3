"""Shared (EchoAtt) and sparse top-k (SEA) attention against naive quadratic forms."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import batch, expand_kv, naive_mix, tiny_bert, tiny_llama

from attnkd.convert import ConversionSpec, convert_attention, converted_modules
from attnkd.convert.shared import SharedAttention, SourceAttention
from attnkd.convert.similarity import SimilarityTable
from attnkd.convert.sparse import SparseTopKAttention, topk_attention

B, H, HKV, S, D = 2, 4, 2, 29, 8


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, S, D, generator=g) for h in (H, HKV, HKV, HKV))


def _mask(padding):
    if padding is None:
        return None
    m = torch.ones(B, S, dtype=torch.bool)
    m[1, :7] = False if padding == "left" else m[1, :7]
    if padding == "right":
        m[1, -7:] = False
    return m


def _real_rows(y, mask):
    return y if mask is None else y[mask[:, None, :, None].expand_as(y)]


def naive_topk(q, k, v, qe, ke, topk, causal, mask):
    """Full estimated scores, top-k per row among allowed keys, exact softmax on those."""
    h = q.shape[1]
    k, v, ke = (expand_kv(x, h).double() for x in (k, v, ke))
    est = qe.double() @ ke.transpose(-1, -2)
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    allowed = (j <= i) if causal else torch.ones(S, S, dtype=torch.bool)
    allowed = allowed[None, None].expand(B, h, S, S).clone()
    if mask is not None:
        allowed &= mask[:, None, None, :]
    est = est.masked_fill(~allowed, float("-inf"))
    out = torch.zeros(B, h, S, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for hh in range(h):
            for r in range(S):
                keep = [c for c in est[b, hh, r].argsort(descending=True).tolist()
                        if allowed[b, hh, r, c]][:topk]  # fmt: skip
                if not keep:
                    continue
                s = q[b, hh, r].double() @ k[b, hh, keep].T / D**0.5
                out[b, hh, r] = torch.softmax(s, -1) @ v[b, hh, keep]
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_shared_layer_is_the_source_probabilities_times_its_own_values(causal, padding):
    q, k, v_src, v_own = _inputs()
    mask = _mask(padding)
    source = SourceAttention(H, HKV, D, causal)
    shared = SharedAttention(H, HKV, D, causal, source=0)
    shared.slot = source.slot
    y_src = source(q, k, v_src, mask)
    y = shared(None, None, v_own, mask)
    for got, v in ((y_src, v_src), (y, v_own)):
        ref = naive_mix(q, k, v, None, None, S, causal, mask)  # window >= S: plain softmax
        torch.testing.assert_close(
            _real_rows(got.double(), mask), _real_rows(ref, mask), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("topk,chunk", [(1, 4), (5, 7), (12, 64), (40, 5)])
def test_sparse_equals_naive_topk(causal, padding, topk, chunk):
    q, k, v, _ = _inputs()
    mask = _mask(padding)
    mixer = SparseTopKAttention(H, HKV, D, causal, topk=topk, rank=3, chunk=chunk)
    with torch.no_grad():
        mixer.proj.add_(0.3 * torch.randn_like(mixer.proj))
        y = mixer(q, k, v, mask)
        qe, ke = mixer.estimates(q, k)
    ref = naive_topk(q, k, v, qe, ke, topk, causal, mask)
    torch.testing.assert_close(
        _real_rows(y.double(), mask), _real_rows(ref, mask), atol=1e-5, rtol=1e-5
    )


def test_sparse_with_every_key_kept_is_softmax_attention():
    q, k, v, _ = _inputs()
    for causal in (True, False):
        qe, ke = q[..., :2], k[..., :2]
        y = topk_attention(q, k, v, qe, ke, S, causal, chunk=6)
        ref = naive_mix(q, k, v, None, None, S, causal)
        torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make,vocab", [(tiny_bert, 50), (tiny_llama, 60)])
def test_shared_model_drops_query_and_key_projections_and_runs(make, vocab):
    teacher = make()
    student = convert_attention(teacher, ConversionSpec(kind="shared", share={2: 0}))
    convs = converted_modules(student)
    assert sorted(convs) == [0, 2]
    assert convs[2].mixer.slot is convs[0].mixer.slot
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    width = teacher.config.hidden_size
    kv_width = teacher.config.num_key_value_heads * width // teacher.config.num_attention_heads \
        if hasattr(teacher.config, "num_key_value_heads") else width  # fmt: skip
    bias = make is tiny_bert
    assert n_t - n_s == width * (width + kv_width) + (bias * (width + kv_width))
    ids, mask = batch(vocab)
    with torch.no_grad():
        out = student(ids, attention_mask=mask)
    key = "logits" if hasattr(out, "logits") else "last_hidden_state"
    assert torch.isfinite(getattr(out, key)).all()


def test_choose_sharing_from_a_table():
    js = [
        [0.0, 0.3, 0.2, 0.25],
        [0.3, 0.0, 0.1, 0.12],
        [0.2, 0.1, 0.0, 0.15],
        [0.25, 0.12, 0.15, 0.0],
    ]
    table = SimilarityTable(js, js, 1, 1)
    assert table.choose_sharing(1) == {2: 1}
    # 3 -> 1 next (0.12); 3 -> 2 would make layer 2 a source while it is shared
    assert table.choose_sharing(2) == {2: 1, 3: 1}
    assert table.choose_sharing(0) == {}
