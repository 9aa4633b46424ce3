"""Causal-LM data: documents per source, the eos-joined token stream, positional block splits
and resumable block batches."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from attnkd.data import lm
from attnkd.data.lm import LMBatches, lm_texts, split_blocks, tokenize_stream
from attnkd.data.sources import source_sentences
from attnkd.engine.batches import ResumableBatches
from attnkd.errors import AttnkdError, ConfigError

EOS = "<|endoftext|>"
CORPUS = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
]


@pytest.fixture(scope="module")
def bpe():
    """A tiny byte-level BPE tokenizer (GPT-2 / SmolLM2 style) trained here, max length 16."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, model_max_length=16)


def _line_ids(tokenizer, text: str) -> list[int]:
    """The documented contract: concatenation of each line's ids (newline kept on the line)."""
    out: list[int] = []
    for line in text.splitlines(keepends=True):
        out += tokenizer.encode(line, add_special_tokens=False)
    return out


# --- lm_texts ----------------------------------------------------------------------------


def test_lm_texts_one_document_per_source_lines_as_written(write):
    a = write("a.txt", "First line.\nFirst line.\n\n  x\n")
    b = write("b.txt", "Second doc\nends here\n")
    docs = lm_texts([f"file:{a}", f"file:{b}"])
    assert len(docs) == 2
    assert docs[0] == "\n".join(source_sentences(f"file:{a}"))
    assert docs[0] == "First line.\nFirst line.\nx"  # repeats and short lines are kept
    assert docs[1] == "Second doc\nends here"


def test_lm_texts_errors(write):
    a = write("a.txt", "text\n")
    empty = write("e.txt", "\n\n")
    with pytest.raises(ConfigError, match="no sources"):
        lm_texts([])
    with pytest.raises(ConfigError, match="listed twice"):
        lm_texts([f"file:{a}", f"file:{a}"])
    with pytest.raises(ConfigError, match="gave no text"):
        lm_texts([f"file:{empty}"])
    with pytest.raises(ConfigError, match="data.bad_rows"):
        lm_texts([f"file:{a}"], bad_rows="ignore")


def test_lm_texts_on_the_shared_corpora(shared_data):
    root = shared_data("tinyshakespeare")
    (doc,) = lm_texts(["tinyshakespeare"], root)
    assert doc.startswith("Before we proceed any further, hear me speak.")
    assert doc.count("\n") + 1 == len(source_sentences("tinyshakespeare", root))
    (raw,) = lm_texts(["tinyshakespeare:raw"], root)
    text = (root / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert raw == text.rstrip("\n") and raw.startswith("First Citizen:\nBefore we proceed")


# --- tokenize_stream ---------------------------------------------------------------------


def test_stream_is_line_ids_joined_by_eos_and_decodes_back(bpe):
    docs = ["\n".join(CORPUS[:2]), CORPUS[2], "\n".join(CORPUS[3:]) + "\n\nfin"]
    ids = tokenize_stream(bpe, docs)
    assert ids.dtype == np.int64 and ids.ndim == 1
    eos = bpe.eos_token_id
    want = _line_ids(bpe, docs[0]) + [eos] + _line_ids(bpe, docs[1]) + [eos]
    want += _line_ids(bpe, docs[2])
    assert ids.tolist() == want
    assert int((ids == eos).sum()) == len(docs) - 1
    assert ids[0] != eos and ids[-1] != eos
    assert bpe.decode(ids.tolist()) == EOS.join(docs)  # byte-level: text kept exactly


def test_stream_in_small_pieces_equals_one_call(bpe, monkeypatch):
    docs = ["\n".join(CORPUS * 3), "\n".join(reversed(CORPUS))]
    whole = tokenize_stream(bpe, docs)
    monkeypatch.setattr(lm, "_LINES_PER_CALL", 2)
    assert np.array_equal(tokenize_stream(bpe, docs), whole)


def test_long_text_never_warns_about_max_length(bpe, caplog):
    from transformers.utils import logging as hf_logging

    doc = "\n".join([" ".join(CORPUS)] * 4)  # every line is longer than model_max_length=16
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            bpe.deprecation_warnings.clear()  # the tokenizer warns once per instance
            bpe(doc)  # control: the plain call does warn
            assert "longer than the specified maximum" in caplog.text
            caplog.clear()
            bpe.deprecation_warnings.clear()
            ids = tokenize_stream(bpe, [doc, doc])
        assert "maximum" not in caplog.text
    finally:
        hf_logging.disable_propagation()
    assert len(ids) > 4 * 16


def test_stream_needs_an_eos_token():
    class NoEos:
        eos_token_id = None

    with pytest.raises(AttnkdError, match="no eos token"):
        tokenize_stream(NoEos(), ["text"])


# --- split_blocks ------------------------------------------------------------------------


def test_split_sizes_order_and_dropped_tail():
    ids = np.arange(1000, 1103)
    sp = split_blocks(ids, block_size=10, val_fraction=0.1, eval_fraction=0.2)
    assert (sp.train.shape, sp.select.shape, sp.eval.shape) == ((7, 10), (1, 10), (2, 10))
    assert sp.block_size == 10 and sp.dropped_tokens == 3
    for part in (sp.train, sp.select, sp.eval):
        assert part.dtype == torch.int64
    joined = torch.cat([sp.train, sp.select, sp.eval]).flatten()
    assert joined.tolist() == list(range(1000, 1100))  # train, then select, then eval


@pytest.mark.parametrize("seed", range(6))
def test_split_blocks_are_disjoint_and_cover_the_stream(seed):
    rng = np.random.default_rng(seed)
    n_tokens, block = int(rng.integers(40, 400)), int(rng.integers(2, 9))
    val, ev = float(rng.uniform(0.01, 0.3)), float(rng.uniform(0.01, 0.3))
    ids = np.arange(n_tokens)  # distinct ids: a shared token would show up as a repeat
    sp = split_blocks(ids, block, val, ev)
    n = n_tokens // block
    for part, fraction in ((sp.eval, ev), (sp.select, val)):  # rounded, at least one
        assert len(part) == 1 or abs(len(part) - fraction * n) <= 0.5
        assert len(part) >= 1 and abs(len(part) - fraction * n) < 1
    assert len(sp.train) + len(sp.select) + len(sp.eval) == n
    starts = [part[:, 0] for part in (sp.train, sp.select, sp.eval)]
    assert starts[0].max() < starts[1].min() and starts[1].max() < starts[2].min()
    everything = torch.cat([sp.train, sp.select, sp.eval]).flatten()
    assert everything.unique().numel() == everything.numel() == n * block
    assert sp.dropped_tokens == n_tokens - n * block
    assert torch.equal(sp.eval[-1], torch.arange((n - 1) * block, n * block))


def test_split_errors_name_the_sizes():
    with pytest.raises(AttnkdError, match="25 tokens make 2 blocks of 10.*1 select.*1 eval"):
        split_blocks(np.arange(25), 10, 0.1, 0.1)
    split_blocks(np.arange(30), 10, 0.1, 0.1)  # 3 blocks: one each
    with pytest.raises(AttnkdError, match="block_size must be at least 2"):
        split_blocks(np.arange(30), 1, 0.1, 0.1)
    for val, ev in ((0.0, 0.1), (0.1, 1.0), (-0.1, 0.1)):
        with pytest.raises(AttnkdError, match="fraction must be in"):
            split_blocks(np.arange(300), 10, val, ev)
    with pytest.raises(AttnkdError, match="one flat stream"):
        split_blocks(np.zeros((4, 30)), 10, 0.1, 0.1)


# --- LMBatches ---------------------------------------------------------------------------


def _blocks(n: int = 11, length: int = 5) -> torch.Tensor:
    return torch.arange(n * length, dtype=torch.int64).view(n, length)


def test_batches_follow_the_seeded_permutation_and_drop_the_last():
    blocks = _blocks()
    batches = LMBatches(blocks, batch_size=3, seed=7)
    assert isinstance(batches, ResumableBatches)
    assert batches.num_batches == len(batches) == 3  # 11 // 3, the last 2 blocks dropped
    for epoch in range(3):
        perm = np.random.default_rng([7, epoch]).permutation(11)
        seen = []
        for i in range(batches.num_batches):
            b = batches.batch_at(epoch, i)
            assert set(b) == {"input_ids", "attention_mask"}
            assert b["input_ids"].shape == (3, 5) and b["input_ids"].dtype == torch.int64
            assert b["attention_mask"].dtype == torch.int64
            assert torch.equal(b["attention_mask"], torch.ones(3, 5, dtype=torch.int64))
            rows = perm[i * 3 : (i + 1) * 3]
            assert torch.equal(b["input_ids"], blocks[torch.as_tensor(rows)])
            seen += (b["input_ids"][:, 0] // 5).tolist()
        assert len(seen) == len(set(seen)) == 9  # each block at most once per epoch
    orders = [batches.indices_at(e, 0) for e in range(4)]
    assert len({tuple(o) for o in orders}) > 1  # reshuffled per epoch


def test_batches_are_deterministic_and_resumable():
    blocks = _blocks(20, 4)
    run = LMBatches(blocks, 4, seed=3)
    straight = [run.batch_at(*divmod(m, run.num_batches))["input_ids"] for m in range(12)]
    state = np.random.get_state(), torch.get_rng_state()
    resumed = LMBatches(blocks, 4, seed=3)  # a fresh object, asked from micro-batch 7 on
    for m in [7, 8, 9, 10, 11, 2, 0]:
        got = resumed.batch_at(*divmod(m, resumed.num_batches))["input_ids"]
        assert torch.equal(got, straight[m])
    assert np.array_equal(np.random.get_state()[1], state[0][1])  # global RNGs untouched
    assert torch.equal(torch.get_rng_state(), state[1])
    other = LMBatches(blocks, 4, seed=4)
    assert not torch.equal(other.batch_at(0, 0)["input_ids"], straight[0])


def test_batches_errors_and_small_sets():
    with pytest.raises(AttnkdError, match="int64"):
        LMBatches(_blocks().int(), 2)
    with pytest.raises(AttnkdError, match="int64"):
        LMBatches(torch.arange(10), 2)
    with pytest.raises(AttnkdError, match="batch_size"):
        LMBatches(_blocks(), 0)
    small = LMBatches(_blocks(2), batch_size=8)
    assert small.num_batches == 1 and small.batch_at(0, 0)["input_ids"].shape == (2, 5)
    with pytest.raises(IndexError):
        small.batch_at(0, 1)
