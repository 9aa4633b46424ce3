"""Causal-LM hygiene: no training block repeats a line of the select / eval blocks."""

from __future__ import annotations

import numpy as np
import pytest

from attnkd.data.lm import (
    drop_held_out_copies,
    lm_texts,
    split_blocks,
    tokenize_lines,
    tokenize_stream,
)
from attnkd.data.overlap import sentence_key
from attnkd.errors import AttnkdError

WORDS = ["the", "story", "of", "a", "king", "and", "his", "horse", "line", "number"]


@pytest.fixture(scope="module")
def tok():
    """A whitespace word-level tokenizer (digits as words) with an eos token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["<unk>", "</s>", *WORDS, *(str(i) for i in range(200)), ".", "!"]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def _story(write, name: str, start: int, n: int):
    lines = [f"line number {i} of the story of a king and his horse ." for i in range(start, n)]
    return write(name, "\n".join(lines) + "\n")


def test_line_spans_cover_the_stream(tok, write):
    a, b = _story(write, "a.txt", 0, 5), _story(write, "b.txt", 5, 9)
    texts = lm_texts([f"file:{a}", f"file:{b}"])
    stream = tokenize_lines(tok, texts)
    assert np.array_equal(stream.ids, tokenize_stream(tok, texts))
    assert len(stream.lines) == 9 and stream.spans[-1, 1] == len(stream.ids)
    for line, (start, end) in zip(stream.lines, stream.spans, strict=True):
        assert stream.ids[start:end].tolist() == tok(line, add_special_tokens=False)["input_ids"]
    assert stream.ids[stream.spans[5, 0] - 1] == tok.eos_token_id  # between the documents


def _contains(block: list[int], seq: list[int]) -> bool:
    return any(block[i : i + len(seq)] == seq for i in range(len(block) - len(seq) + 1))


def test_a_source_listed_twice_trains_on_no_held_out_line(tok, write):
    story = _story(write, "story.txt", 0, 120)
    copy = write("copy/story.txt", story.read_text())
    stream = tokenize_lines(tok, lm_texts([f"file:{story}", f"file:{copy}"]))
    splits = split_blocks(stream.ids, 16, 0.1, 0.1)
    kept = drop_held_out_copies(splits, stream)
    held_start = len(splits.train) * 16
    held = [stream.ids[s:e].tolist() for s, e in stream.spans if e > held_start]
    leaked = [b for b in splits.train.tolist() if any(_contains(b, h) for h in held)]
    assert leaked  # the bug this guards against: the first copy holds the held-out lines
    for block in kept.train.tolist():
        assert not any(_contains(block, h) for h in held)
    assert kept.copies.blocks >= len(leaked) and kept.copies.lines > 0
    assert len(kept.train) == len(splits.train) - kept.copies.blocks
    assert kept.select is splits.select and kept.eval is splits.eval


def test_unique_text_loses_nothing_and_short_lines_do_not_count(tok, write):
    story = _story(write, "story.txt", 0, 120)
    stream = tokenize_lines(tok, lm_texts([f"file:{story}"]))
    splits = split_blocks(stream.ids, 16, 0.1, 0.1)
    kept = drop_held_out_copies(splits, stream)
    assert kept.copies.blocks == 0 and len(kept.train) == len(splits.train)
    assert len(sentence_key("the king .")) < 24
    short = write("short.txt", "the king .\n" * 200)
    stream = tokenize_lines(tok, lm_texts([f"file:{short}"]))
    assert drop_held_out_copies(split_blocks(stream.ids, 8, 0.1, 0.1), stream).copies.blocks == 0


def test_only_copies_left_is_an_error(tok, write):
    line = "line number 7 of the story of a king and his horse .\n"
    same = write("same.txt", line * 100)
    stream = tokenize_lines(tok, lm_texts([f"file:{same}"]))
    with pytest.raises(AttnkdError, match="every training block repeats text"):
        drop_held_out_copies(split_blocks(stream.ids, 16, 0.1, 0.1), stream)
