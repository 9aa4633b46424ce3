"""Swapping attention in tiny BERT / Llama models: inheritance, masks, RoPE, GQA, decoding."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import batch, tiny_bert, tiny_llama

from attnkd.convert import ConversionSpec, convert_attention, converted_modules, mixer_parameters
from attnkd.convert.state import MixerState
from attnkd.errors import ConfigError


def _real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask.bool()]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("left", [False, True])
def test_bert_window_covering_the_sequence_reproduces_the_teacher(attn, left):
    """A window as long as the input is the teacher's softmax attention, so the converted
    model must give the teacher's outputs: q/k/v, padding mask and output wiring are right."""
    teacher = tiny_bert(attn=attn)
    ids, mask = batch(50, left=left)
    student = convert_attention(teacher, ConversionSpec(kind="window", window=64))
    with torch.no_grad():
        want = teacher(ids, attention_mask=mask).last_hidden_state
        got = student(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(_real(got, mask), _real(want, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("left", [False, True])
def test_llama_window_covering_the_sequence_reproduces_the_teacher(attn, left):
    teacher = tiny_llama(attn=attn)
    ids, mask = batch(60, left=left)
    student = convert_attention(teacher, ConversionSpec(kind="window", window=64, layers=[0, 2]))
    with torch.no_grad():
        want = teacher(ids, attention_mask=mask).logits
        got = student(ids, attention_mask=mask).logits
    torch.testing.assert_close(_real(got, mask), _real(want, mask), atol=1e-5, rtol=1e-5)


def test_a_short_window_changes_outputs_and_the_teacher_is_untouched():
    teacher = tiny_llama()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ids, mask = batch(60)
    student = convert_attention(teacher, ConversionSpec(kind="window", window=3))
    with torch.no_grad():
        assert not torch.allclose(student(ids).logits, teacher(ids).logits, atol=1e-4)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not converted_modules(teacher)


@pytest.mark.parametrize("kind", ["linear", "window", "hybrid"])
def test_every_teacher_weight_is_inherited(kind):
    teacher = tiny_llama()
    student = convert_attention(teacher, ConversionSpec(kind=kind, window=4, layers=[1, -1]))
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for key, value in t_sd.items():
        assert torch.equal(s_sd[key], value), key
    extra = sorted(set(s_sd) - set(t_sd))
    assert all(".mixer." in k for k in extra)
    assert sorted(converted_modules(student)) == [1, 2]
    n_new = sum(p.numel() for p in mixer_parameters(student))
    assert n_new == (0 if kind == "window" else sum(s_sd[k].numel() for k in extra))


def test_bad_specs_raise_config_errors():
    teacher = tiny_bert()
    with pytest.raises(ConfigError, match="convert.kind"):
        convert_attention(teacher, ConversionSpec(kind="lsh"))
    with pytest.raises(ConfigError, match="convert.share"):
        convert_attention(teacher, ConversionSpec(kind="shared"))
    with pytest.raises(ConfigError, match="earlier layer"):
        convert_attention(teacher, ConversionSpec(kind="shared", share={1: 2}))
    with pytest.raises(ConfigError, match="itself shared"):
        convert_attention(teacher, ConversionSpec(kind="shared", share={1: 0, 2: 1}))
    with pytest.raises(ConfigError, match="convert.topk"):
        convert_attention(teacher, ConversionSpec(kind="sparse", rank=99))
    with pytest.raises(ConfigError, match="convert.layers"):
        convert_attention(teacher, ConversionSpec(kind="linear", layers=[5]))
    with pytest.raises(ConfigError, match="convert.window"):
        convert_attention(teacher, ConversionSpec(kind="hybrid", window=0))
    with pytest.raises(ConfigError, match="convert.terrace"):  # BERT is bidirectional
        convert_attention(teacher, ConversionSpec(kind="hybrid", window=4, terrace=True))
    with pytest.raises(ConfigError, match="convert.terrace"):
        convert_attention(tiny_llama(), ConversionSpec(kind="window", chunk=2, terrace=True))
    with pytest.raises(ConfigError, match="convert.sinks"):  # more sinks than a chunk
        convert_attention(tiny_llama(), ConversionSpec(kind="hybrid", window=4, sinks=5))
    with pytest.raises(ConfigError, match="convert.sinks"):  # BERT is bidirectional
        convert_attention(teacher, ConversionSpec(kind="window", window=4, sinks=1))


@pytest.mark.parametrize(
    "kind",
    ["linear", "window", "hybrid", "shared", "sparse", "window-terrace", "hybrid-terrace",
     "hybrid-terrace-sinks"],
)  # fmt: skip
@pytest.mark.parametrize("left", [False, True])
def test_decoding_with_a_cache_equals_the_full_forward(kind, left):
    """Prompt through the cache, then one token at a time: logits equal the parallel form."""
    teacher = tiny_llama()
    terrace = "terrace" in kind
    spec = ConversionSpec(kind=kind.split("-")[0], window=5, layers=[0, 2],
                          chunk=5 if terrace else 4, share={2: 0}, topk=4,
                          terrace=terrace, sinks=2 if "sinks" in kind else 0)  # fmt: skip
    student = convert_attention(teacher, spec)
    with torch.no_grad():
        for p in student.parameters():  # move the feature maps off their initial values
            p.add_(0.05 * torch.randn_like(p))
    ids, mask = batch(60, seq=21, left=left)
    prompt = 6
    with torch.no_grad():
        full = student(ids, attention_mask=mask).logits
        out = student(ids[:, :prompt], attention_mask=mask[:, :prompt], use_cache=True)
        cache, steps = out.cache, [out.logits]
        for t in range(prompt, ids.shape[1]):
            out = student(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache)
            cache = out.cache
            steps.append(out.logits)
    got = torch.cat(steps, dim=1)
    torch.testing.assert_close(_real(got, mask), _real(full, mask), atol=1e-4, rtol=1e-4)
    assert isinstance(cache.layers[0], MixerState) and isinstance(cache.layers[2], MixerState)
    assert cache.layers[0].seen == ids.shape[1]
    assert cache.get_seq_length() == ids.shape[1]


def test_generate_runs_with_converted_layers():
    student = convert_attention(tiny_llama(), ConversionSpec(kind="hybrid", window=4))
    ids, _ = batch(60, seq=8)
    with torch.no_grad():
        out = student.generate(ids, max_new_tokens=5, do_sample=False)
        # greedy continuation agrees with argmax of a full forward over the result
        logits = student(out).logits
    assert out.shape == (2, 13)
    torch.testing.assert_close(logits[:, 7:-1].argmax(-1), out[:, 8:])


def test_config_validation_knows_the_same_kinds():
    from attnkd.convert import KINDS
    from attnkd.validate import CONVERT_KINDS

    assert set(CONVERT_KINDS) == set(KINDS) | {"mla"}  # mla: convert_to_mla
