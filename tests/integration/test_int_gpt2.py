"""GPT-2 (fused q/k/v projection, learned positions, causal): capture, student cut, and a short
causal-LM distillation, all on a tiny model built here."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from int_helpers import WORDS, decoder_batch, make_decoder_tokenizer, make_sentence

from attnkd.capture import Capture, Tap, split_heads
from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.distill import run_distill
from attnkd.models.adapters import adapter_for, geometry
from attnkd.students.build import build_student

HEADS, LAYERS, VOCAB = 4, 2, 50


def tiny_gpt2(seed: int = 0, attn: str = "sdpa", vocab: int = VOCAB):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=LAYERS, n_head=HEADS, n_positions=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    model.set_attn_implementation(attn)
    return model.eval()


def _naive_probs(q, k, mask):
    """softmax(q k^T / sqrt(d) + causal and key-padding mask) per head, (batch, heads, s, s)."""
    qh, kh = split_heads(q, HEADS), split_heads(k, HEADS)
    s = qh.shape[2]
    allowed = torch.ones(s, s).tril().bool()[None, None] & mask.bool()[:, None, None, :]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    return scores.masked_fill(~allowed, -math.inf).softmax(-1)


def test_adapter_and_geometry():
    model = tiny_gpt2()
    a = adapter_for(model)
    assert (a.family, a.causal, a.rope, a.fused_qkv) == ("gpt2", True, False, True)
    g = geometry(model.config)
    assert (g.num_layers, g.hidden_size, g.num_heads, g.num_kv_heads, g.head_dim, g.causal) == (
        LAYERS, 32, HEADS, HEADS, 8, True
    )  # fmt: skip


def test_fused_q_k_v_slices_reproduce_the_eager_attention():
    model = tiny_gpt2(attn="eager")
    batch = decoder_batch("right")
    taps = [Tap(kind, i) for kind in ("q", "k", "v") for i in range(LAYERS)]
    with torch.no_grad(), Capture(model, taps) as cap:
        out = model(**batch, output_attentions=True)
    mask = batch["attention_mask"]
    for i in range(LAYERS):
        q, k, v = (cap.taps.get(kind, i) for kind in ("q", "k", "v"))
        assert q.shape == k.shape == v.shape == (3, 7, 32)
        got = out.attentions[i]
        want = _naive_probs(q, k, mask)
        real = mask.bool()[:, None, :, None].expand_as(want)  # padded query rows: any value
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    # v is the last third of c_attn's output, computed here independently
    with torch.no_grad():
        h = model.transformer.h[0].ln_1(model.transformer.drop(
            model.transformer.wte(batch["input_ids"]) + model.transformer.wpe(torch.arange(7))
        ))  # fmt: skip
        qkv = (
            h @ model.transformer.h[0].attn.c_attn.weight + model.transformer.h[0].attn.c_attn.bias
        )
    torch.testing.assert_close(cap.taps.get("v", 0), qkv[..., 64:], atol=1e-6, rtol=0)


def test_sdpa_and_eager_capture_the_same_slices():
    eager, fused = tiny_gpt2(attn="eager"), tiny_gpt2(attn="sdpa")
    batch = decoder_batch("right")
    taps = [Tap(kind, 1) for kind in ("q", "k", "v", "context", "hidden", "logits")]
    with torch.no_grad(), Capture(eager, taps) as ce:
        eager(**batch)
    with torch.no_grad(), Capture(fused, taps) as cf:
        fused(**batch)
    for tap in taps:
        torch.testing.assert_close(ce.taps.get(tap.kind, tap.layer), cf.taps.get(tap.kind, 1),
                                   atol=1e-5, rtol=0)  # fmt: skip


def test_students_of_gpt2():
    teacher = tiny_gpt2()
    batch = decoder_batch("none")
    same, _ = build_student(teacher, [0, 1])
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(**batch).logits, teacher(**batch).logits)
    cut, report = build_student(teacher, [1])
    assert cut.config.n_layer == 1 and not report.fresh
    torch.testing.assert_close(
        cut.transformer.h[0].attn.c_attn.weight, teacher.transformer.h[1].attn.c_attn.weight
    )


def test_short_causal_lm_distillation_from_gpt2(tmp_path):
    tok = make_decoder_tokenizer(WORDS)
    folder = tmp_path / "tiny-gpt2"
    tiny_gpt2(vocab=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    text = tmp_path / "t.txt"
    rng = random.Random(1)
    text.write_text("\n".join(make_sentence(rng) for _ in range(200)) + "\n", encoding="utf-8")
    cfg = apply_overrides(default_recipe(), [
        "name=gpt2", "task=causal_lm", f"output_dir={tmp_path / 'runs'}", f"teacher.name={folder}",
        "student.layers=[1]", "losses=[{name: logits, kind: rkl}, {name: attention}]",
        f"data.train_sources=[file:{text}]", "data.max_length=16", "train.max_steps=3",
        "train.max_minutes=null", "train.eval_every=3", "train.batch_size=4",
        "train.freeze_embeddings=false",
    ])  # fmt: skip
    res = run_distill(cfg, progress=False)
    assert res["task"] == "causal_lm" and res["student"]["layers"] == 1
    assert math.isfinite(res["student"]["perplexity"]) and res["train"]["steps"] == 3
    assert (Path(cfg.output_dir) / "gpt2" / "student" / "model.safetensors").exists()
