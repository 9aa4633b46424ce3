"""Comparable perplexity protocol: windows and stride score each token once and count them,
agreement with a naive per-position loop, held-out text as written, named protocols."""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.errors import AttnkdError
from attnkd.eval.lm_protocol import (
    WindowProtocol,
    held_out,
    parse_protocol,
    text_as_written,
    text_perplexity,
    window_perplexity,
    window_spans,
)

V = 13


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize(("n", "window", "stride"), [(50, 8, 3), (50, 8, 8), (7, 8, 4), (33, 5, 1)])
def test_windows_score_each_token_once(n, window, stride):
    spans = window_spans(n, window, stride)
    hits = [0] * n
    for begin, end, first in spans:
        assert 0 <= begin < first <= end <= n and end - begin <= window
        for t in range(first, end):
            hits[t] += 1
    assert spans[-1][1] == n and hits[0] == 0
    if stride < window:
        assert hits[1:] == [1] * (n - 1)  # every token but the first, exactly once
        assert all(first - begin >= min(window - stride, first) for begin, _, first in spans[1:])
    else:  # non-overlapping: the first token of each window has no context and is skipped
        starts = {b for b, _, _ in spans}
        assert hits == [0 if t in starts else 1 for t in range(n)]


@pytest.mark.parametrize("stride", [3, 8])
def test_window_perplexity_equals_a_naive_loop(stride):
    model = tiny_llama()
    model.train()
    ids = torch.randint(0, V, (41,), generator=torch.Generator().manual_seed(0))
    proto = WindowProtocol(8, stride)
    res = window_perplexity(model, ids, proto)
    assert model.training  # mode restored
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for begin, end, first in window_spans(len(ids), 8, stride):
            for t in range(first, end):  # predict token t from tokens begin..t-1
                logits = model(input_ids=ids[None, begin:t]).logits[0, -1].double()
                total -= float(torch.log_softmax(logits, -1)[ids[t]])
                count += 1
    assert res.scored_tokens == count and res.total_tokens == 41
    assert res.nll == pytest.approx(total / count, rel=1e-5)
    assert res.ppl == pytest.approx(math.exp(total / count), rel=1e-5)
    assert res.protocol == f"windows:8:stride={stride}"
    if stride < 8:
        assert count == 40


def test_parse_protocol_and_held_out():
    assert parse_protocol("windows:512:stride=512") == WindowProtocol(512, 512)
    assert parse_protocol("windows:512") == WindowProtocol(512, 512)
    assert parse_protocol("windows:1024:stride=256").name == "windows:1024:stride=256"
    for bad in ("blocks", "windows:512:stride=1024", "windows:1", "windows:8:stride=0"):
        with pytest.raises(AttnkdError, match="protocol"):
            parse_protocol(bad)
    assert held_out("abcdefghij", 0.3) == "hij"
    assert held_out("abcdefghij", 1.0) == "abcdefghij"
    with pytest.raises(AttnkdError, match="tail"):
        held_out("abc", 0.0)


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [ord(c) % V for c in text]}


def test_text_perplexity_on_a_file_as_written(tmp_path):
    path = tmp_path / "t.txt"
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 4
    path.write_text(text, encoding="utf-8")
    model = tiny_llama()
    res = text_perplexity(model, _CharTokenizer(), f"file:{path}", "windows:16:stride=8", 0.5)
    part = text[len(text) // 2 :]
    assert res["total_tokens"] == len(part) and res["scored_tokens"] == len(part) - 1
    ids = torch.tensor([ord(c) % V for c in part])
    want = window_perplexity(model, ids, WindowProtocol(16, 8))
    assert res["perplexity"] == pytest.approx(want.ppl) and res["protocol"] == want.protocol
    with pytest.raises(AttnkdError, match="unknown text"):
        text_as_written("shakespeare")
    with pytest.raises(AttnkdError, match="cannot read"):
        text_as_written(f"file:{tmp_path / 'missing.txt'}")


def test_known_texts_are_the_files_as_written():
    from attnkd import paths

    root = paths.data_dir(None)
    if not (root / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("benchmark data not found")
    shakespeare = text_as_written("tinyshakespeare")
    assert len(shakespeare) == 1_115_394 and shakespeare.startswith("First Citizen:\n")
    assert " @-@ " in text_as_written("wikitext2")
