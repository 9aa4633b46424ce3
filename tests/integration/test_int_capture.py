"""Hook capture on tiny BERT and MPNet: fused vs eager agree, taps mean what they say, hooks go."""

from __future__ import annotations

import math

import pytest
import torch
from int_helpers import HEADS, LAYERS, WIDTH, tiny_bert, tiny_mpnet

from attnkd.capture import KINDS, Capture, Tap, Taps, split_heads
from attnkd.models.adapters import adapter_for

# encoders have no LM head, so no "logits" tap (decoders: tests/integration/test_int_llama.py)
ALL_TAPS = [
    Tap(kind, layer) for kind in KINDS
    if kind not in ("embeddings", "logits", "position_bias", "input_ids")
    for layer in range(LAYERS)
]  # fmt: skip
ALL_TAPS.append(Tap("embeddings", 0))


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _naive_context(q, k, v, mask, heads):
    """softmax(q k^T / sqrt(d)) v per head with padded keys blocked: (batch, seq, width)."""
    qh, kh, vh = (split_heads(x, heads) for x in (q, k, v))
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], -math.inf)
    ctx = scores.softmax(-1) @ vh
    return ctx.transpose(1, 2).reshape(q.shape)


def test_eager_and_sdpa_capture_the_same_tensors(batch):
    eager, fused = tiny_bert(seed=0, attn="eager"), tiny_bert(seed=0, attn="sdpa")
    assert eager.config._attn_implementation == "eager"
    assert fused.config._attn_implementation == "sdpa"
    se, sf = eager.state_dict(), fused.state_dict()
    assert all(torch.equal(se[k], sf[k]) for k in se)
    with torch.no_grad(), Capture(eager, ALL_TAPS) as ce:
        out_e = eager(**batch)[0]
    with torch.no_grad(), Capture(fused, ALL_TAPS) as cf:
        out_f = fused(**batch)[0]
    torch.testing.assert_close(out_e, out_f, atol=1e-5, rtol=0)
    assert set(ce.taps.tensors) == set(cf.taps.tensors) == set(ALL_TAPS)
    for tap in ALL_TAPS:
        a, b = ce.taps.tensors[tap], cf.taps.tensors[tap]
        assert a.shape == (*batch["input_ids"].shape, WIDTH), tap
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"{tap}")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_taps_match_an_independent_forward(batch, attn):
    model = tiny_bert(seed=2, attn=attn)
    mask = batch["attention_mask"]
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True).hidden_states
        with Capture(model, ALL_TAPS) as cap:
            model(**batch)
    torch.testing.assert_close(cap.taps.get("embeddings"), ref[0], atol=0, rtol=0)
    for i in range(LAYERS):
        torch.testing.assert_close(cap.taps.get("hidden", i), ref[i + 1], atol=1e-6, rtol=0)
        attn_mod = model.encoder.layer[i].attention.self
        with torch.no_grad():
            q, k, v = (lin(ref[i]) for lin in (attn_mod.query, attn_mod.key, attn_mod.value))
        torch.testing.assert_close(cap.taps.get("q", i), q, atol=1e-6, rtol=0)
        torch.testing.assert_close(cap.taps.get("k", i), k, atol=1e-6, rtol=0)
        torch.testing.assert_close(cap.taps.get("v", i), v, atol=1e-6, rtol=0)
        ctx = _naive_context(q, k, v, mask, HEADS)
        torch.testing.assert_close(cap.taps.get("context", i), ctx, atol=1e-5, rtol=0)


def test_mpnet_taps_hidden_qkv_and_context_before_the_output_projection(batch):
    model = tiny_mpnet(seed=3)
    assert adapter_for(model).family == "mpnet"
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True).hidden_states
    attn_out: dict[int, torch.Tensor] = {}
    handles = [
        model.encoder.layer[i].attention.attn.register_forward_hook(
            lambda _m, _i, out, i=i: attn_out.__setitem__(i, out[0])
        )
        for i in range(LAYERS)
    ]
    try:
        with torch.no_grad(), Capture(model, ALL_TAPS) as cap:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(cap.taps.get("embeddings"), ref[0], atol=0, rtol=0)
    for i in range(LAYERS):
        attn = model.encoder.layer[i].attention.attn
        torch.testing.assert_close(cap.taps.get("hidden", i), ref[i + 1], atol=1e-6, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(cap.taps.get("q", i), attn.q(ref[i]), atol=1e-6, rtol=0)
            torch.testing.assert_close(cap.taps.get("v", i), attn.v(ref[i]), atol=1e-6, rtol=0)
            # context is the per-head output *before* MPNet's own output projection `o`
            projected = attn.o(cap.taps.get("context", i))
        torch.testing.assert_close(projected, attn_out[i], atol=1e-6, rtol=0)
        assert not torch.allclose(cap.taps.get("context", i), attn_out[i])


@pytest.mark.parametrize("make", [tiny_bert, tiny_mpnet], ids=["bert", "mpnet"])
def test_hooks_are_removed_after_the_block_even_on_error(batch, make):
    model = make()
    before = _hook_count(model)
    assert before == 0
    with Capture(model, ALL_TAPS) as cap:
        assert _hook_count(model) == len(ALL_TAPS)
        model(**batch)
    assert _hook_count(model) == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"), Capture(model, ALL_TAPS):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0
    # a capture object can be entered again (the training step reuses one per model)
    cap.taps.clear()
    with cap:
        model(**batch)
    assert set(cap.taps.tensors) == set(ALL_TAPS)
    assert _hook_count(model) == 0


def test_negative_layers_resolve_and_out_of_range_fails(batch):
    model = tiny_bert()
    cap = Capture(model, [Tap("q", -1), Tap("hidden", -LAYERS), Tap("q", LAYERS - 1)])
    assert cap.requests == [Tap("hidden", 0), Tap("q", LAYERS - 1)]
    with torch.no_grad(), cap:
        model(**batch)
    assert cap.taps.get("q", LAYERS - 1).shape[-1] == WIDTH
    with pytest.raises(IndexError, match="out of range"):
        Capture(model, [Tap("k", LAYERS)])
    with pytest.raises(IndexError, match="out of range"):
        Capture(model, [Tap("k", -LAYERS - 1)])


def test_unknown_kind_and_missing_tap_errors():
    with pytest.raises(ValueError, match="unknown tap kind 'attn'"):
        Tap("attn", 0)
    taps = Taps({Tap("q", 1): torch.zeros(1)})
    with pytest.raises(KeyError, match=r"k@1 was not captured \(captured: q@1\)"):
        taps.get("k", 1)


def test_capture_on_a_task_model_uses_its_base_model(batch):
    from int_helpers import bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(num_labels=2)).eval()
    with torch.no_grad():
        ref = model.bert(**batch).last_hidden_state
        with Capture(model, [Tap("hidden", -1)]) as cap:
            model(**batch)
    torch.testing.assert_close(cap.taps.get("hidden", LAYERS - 1), ref, atol=1e-6, rtol=0)


def test_split_heads_is_a_view_and_checks_divisibility():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
    h = split_heads(x, 4)
    assert h.shape == (2, 4, 3, 2)
    assert h.data_ptr() == x.data_ptr()
    assert torch.equal(h[1, 2, 0], x[1, 0, 4:6])
    with pytest.raises(ValueError, match="not divisible by 3"):
        split_heads(x, 3)
