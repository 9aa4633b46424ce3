"""Teacher embedding cache: computed once, looked up by text in any order, extended with new
texts, keyed by model and settings; a mismatched, corrupt or truncated file is refused."""

from __future__ import annotations

import json

import pytest
import torch

from attnkd.data.embedding_cache import (
    CacheError,
    CacheKey,
    EmbeddingCache,
    describe,
    model_fingerprint,
)

TEXTS = ["a dog runs .", "the cat sleeps .", "a man plays the guitar .", "it rains ."]


class _Encoder:
    """A deterministic fake teacher: embedding = a function of the text; counts its calls."""

    def __init__(self, width: int = 6):
        self.width, self.seen = width, []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.seen += texts
        return torch.stack([self.vec(t) for t in texts])

    def vec(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum(map(ord, text)))
        return torch.randn(self.width, generator=g)


def _key(sha: str = "a" * 64, max_length: int = 128) -> CacheKey:
    return CacheKey("teacher-x", sha, max_length)


def test_encodes_once_then_reads_back_in_any_order(tmp_path):
    enc = _Encoder()
    cache = EmbeddingCache(tmp_path, _key())
    emb, new = cache.get(TEXTS, enc)
    assert new == 4 and sorted(enc.seen) == sorted(TEXTS)
    torch.testing.assert_close(emb, torch.stack([enc.vec(t) for t in TEXTS]))
    again = EmbeddingCache(tmp_path, _key())  # a later run
    order = [TEXTS[2], TEXTS[0], TEXTS[2], TEXTS[3]]
    emb2, new2 = again.get(order, enc)
    assert new2 == 0 and len(enc.seen) == 4
    torch.testing.assert_close(emb2, torch.stack([enc.vec(t) for t in order]))


def test_new_texts_are_added_and_saved_in_chunks(tmp_path):
    enc = _Encoder()
    cache = EmbeddingCache(tmp_path, _key())
    cache.get(TEXTS[:2], enc)
    more = TEXTS + ["one more sentence .", "and another one ."]
    emb, new = cache.get(more, enc, chunk=2)
    assert new == 4 and len(enc.seen) == 6  # the first two were not encoded again
    torch.testing.assert_close(emb, torch.stack([enc.vec(t) for t in more]))
    meta = describe(cache.path)
    assert meta["rows"] == "6" and meta["width"] == "6" and meta["model"] == "teacher-x"


def test_key_depends_on_model_and_settings():
    assert _key().fingerprint == _key().fingerprint
    assert _key("b" * 64).fingerprint != _key().fingerprint
    assert _key(max_length=64).fingerprint != _key().fingerprint


def test_a_file_from_another_model_or_setting_is_refused_naming_the_field(tmp_path):
    EmbeddingCache(tmp_path, _key()).get(TEXTS, _Encoder())
    other = EmbeddingCache(tmp_path, _key("b" * 64))
    EmbeddingCache(tmp_path, _key()).path.rename(other.path)  # e.g. copied under a wrong name
    with pytest.raises(CacheError, match=r"model_sha256 is 'a{64}' in the file.*teacher-x"):
        other.get(TEXTS, _Encoder())
    shorter = EmbeddingCache(tmp_path, _key(max_length=64))
    other.path.rename(shorter.path)
    with pytest.raises(CacheError, match="max_length is '128' in the file, '64' expected"):
        shorter.get(TEXTS, _Encoder())


def test_corrupt_truncated_or_wrong_width_files_are_refused(tmp_path):
    cache = EmbeddingCache(tmp_path, _key())
    cache.get(TEXTS, _Encoder())
    data = cache.path.read_bytes()
    cache.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="unreadable"):
        cache.get(TEXTS, _Encoder())
    cache.path.unlink()
    cache.get(TEXTS, _Encoder(width=6))
    with pytest.raises(CacheError, match="holds width 6, the teacher now gives 5"):
        cache.get(["a new sentence ."], _Encoder(width=5))


def test_rows_metadata_must_match_the_tensors(tmp_path):
    from safetensors.torch import save_file

    cache = EmbeddingCache(tmp_path, _key())
    meta = _key().metadata(width=6, rows=3)  # says 3 rows, holds 4
    digests = torch.zeros(4, 32, dtype=torch.uint8)
    tensors = {"embeddings": torch.zeros(4, 6), "text_sha256": digests}
    save_file(tensors, str(cache.path), metadata=meta)
    with pytest.raises(CacheError, match="says 3 rows"):
        cache.get(TEXTS, _Encoder())


def test_model_fingerprint_reads_weights_and_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    (tmp_path / "vocab.txt").write_text("[PAD]\na\n")
    first = model_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    second = model_fingerprint(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\nb\n")
    assert len({first, second, model_fingerprint(tmp_path)}) == 3
    with pytest.raises(CacheError, match="no config.json"):
        model_fingerprint(tmp_path / "missing")


def test_an_interrupted_encoding_keeps_the_finished_prefix(tmp_path):
    enc, calls = _Encoder(), []

    def dies_on_second_chunk(texts):
        calls.append(texts)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return enc(texts)

    cache = EmbeddingCache(tmp_path, _key())
    with pytest.raises(KeyboardInterrupt):
        cache.get(TEXTS, dies_on_second_chunk, chunk=2)
    emb, new = cache.get(TEXTS[:2], enc)  # the first chunk, in the order given, was saved
    assert new == 0
    torch.testing.assert_close(emb, torch.stack([enc.vec(t) for t in TEXTS[:2]]))


def test_two_processes_sharing_a_cache_lose_no_rows_and_skip_each_others_work(tmp_path):
    """B writes between A's read and A's write (as a concurrent run would): both sets of rows
    stay, and A's later chunk skips what B already encoded."""
    enc_a, enc_b = _Encoder(), _Encoder()
    a, b = EmbeddingCache(tmp_path, _key()), EmbeddingCache(tmp_path, _key())
    others = ["b writes this .", TEXTS[3]]

    def a_encode(texts):
        if not enc_a.seen:  # during A's first chunk, B adds its own rows (one that A wants too)
            b.get(others, enc_b)
        return enc_a(texts)

    emb, _ = a.get(TEXTS, a_encode, chunk=2)
    assert enc_a.seen == TEXTS[:3]  # TEXTS[3] came from B, not encoded twice
    torch.testing.assert_close(emb, torch.stack([enc_a.vec(t) for t in TEXTS]))
    assert describe(a.path)["rows"] == "5"
    both, new = EmbeddingCache(tmp_path, _key()).get(TEXTS + others, _Encoder())
    assert new == 0 and both.shape == (6, 6)
