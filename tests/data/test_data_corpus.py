"""Sources, corpus building (filter, de-dup, exclude, seeded shuffle) and validation splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnkd.data.corpus import build_corpus, normalize_sentence, split_validation
from attnkd.data.sources import known_sources, load_source, source_sentences
from attnkd.errors import ConfigError, DataError

# --- sources -----------------------------------------------------------------------------


def test_unknown_source_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        load_source("stsb:test")
    msg = str(info.value)
    assert info.value.exit_code == 2 and "data.train_sources" in msg
    assert "unknown source 'stsb:test'" in msg
    for name in ("stsb:train", "stsb:dev", "sst2:train", "mrpc:train", "rte:train", "wikitext2"):
        assert name in msg and name in known_sources()
    assert "tinyshakespeare" in msg and "file:PATH" in msg


def test_file_sources_by_extension(write):
    txt = write("a.txt", "one\n\n two \n")
    assert source_sentences(f"file:{txt}") == ["one", "two"]
    tsv = write("a.tsv", "id\tsentence\tother\n1\tfirst \tx\n2\tsecond\ty\n")
    assert source_sentences(f"file:{tsv}") == ["first", "second"]
    assert source_sentences(f"file:{tsv}#other") == ["x", "y"]
    assert source_sentences(f"file:{tsv}#sentence,other") == ["first", "x", "second", "y"]
    assert source_sentences(f"file:{tsv}#0") == ["1", "2"]
    csv = write("a.csv", 'text,n\n"Hello, world",1\nBye,2\n')
    assert source_sentences(f"file:{csv}") == ["Hello, world", "Bye"]
    single = write("one.tsv", "words\nalpha\nbeta\n")
    assert source_sentences(f"file:{single}") == ["alpha", "beta"]
    jsonl = write("a.jsonl", '{"text": "x y", "s": "z"}\n{"text": "w", "s": "v"}\n')
    assert source_sentences(f"file:{jsonl}") == ["x y", "w"]
    assert source_sentences(f"file:{jsonl}#s") == ["z", "v"]


def test_file_source_errors(write, tmp_path, check_data_error):
    tsv = write("a.tsv", "id\tlabel\n1\t0\n")
    with pytest.raises(DataError) as info:
        load_source(f"file:{tsv}")
    check_data_error(info.value, tsv, 1, "which column", "'id', 'label'")
    txt = write("a.txt", "x\n")
    with pytest.raises(DataError) as info:
        load_source(f"file:{txt}#text")
    check_data_error(info.value, txt, None, "only to .tsv")
    other = write("a.parquet", "x")
    with pytest.raises(DataError) as info:
        load_source(f"file:{other}")
    check_data_error(info.value, other, None, "unknown file type '.parquet'")
    missing = tmp_path / "none.txt"
    with pytest.raises(DataError) as info:
        load_source(f"file:{missing}")
    check_data_error(info.value, missing, None, "not found")
    with pytest.raises(ConfigError, match="needs a path"):
        load_source("file:")


def test_jsonl_source_type_errors_follow_policy(write, check_data_error):
    path = write("a.jsonl", '{"text": "ok"}\n{"text": 3}\n{"nope": 1}\n{"text": "fine"}\n')
    with pytest.raises(DataError) as info:
        load_source(f"file:{path}")
    check_data_error(info.value, path, 2, "field 'text' must be a string, found 3")
    texts = load_source(f"file:{path}", bad_rows="skip")
    assert list(texts) == ["ok", "fine"] and texts.stats.skipped == 2


def test_real_sources_shapes(shared_data):
    root = shared_data("stsb")
    shared_data("rte")
    assert len(load_source("stsb:train", root)) == 2 * 5749
    assert len(load_source("stsb:dev", root)) == 2 * 1500
    assert len(load_source("rte:train", root)) == 2 * 2490


# --- corpus ------------------------------------------------------------------------------


def test_normalize_ignores_case_spacing_and_punctuation():
    for text in ["  A  man\tis HERE ", "x", "Two\n lines", "É café", "it 's n't"]:
        key = normalize_sentence(text)
        assert key == normalize_sentence(key)  # a key is its own key
        assert key == "".join(c for c in key if c.isalnum()) == key.casefold()
    assert normalize_sentence("Two\n lines") == normalize_sentence("two lines!")


def test_dedup_exclude_and_min_chars_counts(write):
    a = write("a.txt", "The cat sat.\nthe  CAT sat.\nA dog ran.\nhi\nSecret eval line.\n")
    b = write("b.txt", "A DOG ran.\nA bird flew.\nsecret EVAL line.\n")
    corpus = build_corpus(
        [f"file:{a}", f"file:{b}"], min_chars=5, exclude={"Secret  eval line."}, seed=3
    )
    assert sorted(corpus.sentences) == sorted(["The cat sat.", "A dog ran.", "A bird flew."])
    ca, cb = corpus.counts[f"file:{a}"], corpus.counts[f"file:{b}"]
    assert (ca.read, ca.too_short, ca.excluded, ca.duplicates, ca.kept) == (5, 1, 1, 1, 2)
    assert (cb.read, cb.too_short, cb.excluded, cb.duplicates, cb.kept) == (3, 0, 1, 1, 1)
    assert corpus.duplicates_removed == 2 and corpus.excluded == 2
    assert ca.used + cb.used == len(corpus) == 3
    assert "duplicates 1" in corpus.summary()
    kept_all = build_corpus([f"file:{a}", f"file:{b}"], min_chars=1, dedup=False)
    assert len(kept_all) == 8


def _numbered(write, n: int, name: str = "n.txt"):
    return write(name, "".join(f"sentence number {i}\n" for i in range(n)))


def test_seeded_shuffle_is_deterministic_and_leaves_global_rng_alone(write):
    path = _numbered(write, 200)
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    first = build_corpus([f"file:{path}"], seed=7)
    again = build_corpus([f"file:{path}"], seed=7)
    other = build_corpus([f"file:{path}"], seed=8)
    assert first.sentences == again.sentences
    assert first.sentences != other.sentences
    assert sorted(first.sentences) == sorted(other.sentences)
    expected = [f"sentence number {i}" for i in np.random.default_rng(7).permutation(200)]
    assert first.sentences == expected
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_max_sentences_and_bad_arguments(write):
    path = _numbered(write, 50)
    other = write("o.txt", "another line here\n")
    corpus = build_corpus([f"file:{path}", f"file:{other}"], max_sentences=10, seed=1)
    assert len(corpus) == 10
    assert sum(c.used for c in corpus.counts.values()) == 10
    assert corpus.sentences == build_corpus([f"file:{path}", f"file:{other}"], seed=1)[:10]
    with pytest.raises(ConfigError, match="data.max_sentences"):
        build_corpus([f"file:{path}"], max_sentences=0)
    with pytest.raises(ConfigError, match="listed twice"):
        build_corpus([f"file:{path}", f"file:{path}"])
    with pytest.raises(ConfigError, match="no sources"):
        build_corpus([])
    with pytest.raises(ConfigError, match="no sentences left"):
        build_corpus([f"file:{path}"], min_chars=1000)


def test_skipped_rows_reach_the_corpus(write):
    path = write("d.jsonl", '{"text": "a fine sentence"}\n{broken\n{"text": "another one"}\n')
    corpus = build_corpus([f"file:{path}"], bad_rows="skip")
    assert len(corpus) == 2 and corpus.skipped_rows == 1
    assert "malformed rows skipped 1" in corpus.summary()
    with pytest.raises(DataError):
        build_corpus([f"file:{path}"])


def test_real_stsb_dev_never_leaks_into_training(shared_data):
    root = shared_data("stsb")
    dev = source_sentences("stsb:dev", root)
    corpus = build_corpus(["stsb:train"], root, exclude=dev, min_chars=1)
    dev_keys = {normalize_sentence(s) for s in dev}
    assert not dev_keys & {normalize_sentence(s) for s in corpus}
    assert corpus.excluded > 0  # the two splits do share sentences
    keys = [normalize_sentence(s) for s in corpus]
    assert len(keys) == len(set(keys))


# --- validation split --------------------------------------------------------------------


def test_split_validation_properties():
    items = [f"item{i}" for i in range(103)]
    split = split_validation(items, 0.1, seed=5)
    assert len(split.val) == 10 and len(split.train) == 93
    assert set(split.train).isdisjoint(split.val)
    assert sorted(split.train + split.val) == sorted(items)
    assert split.train_indices == sorted(split.train_indices)  # original order kept
    assert [items[i] for i in split.val_indices] == split.val
    assert split_validation(items, 0.1, seed=5) == split
    assert split_validation(items, 0.1, seed=6).val != split.val
    assert len(split_validation(items[:3], 0.01).val) == 1
    assert len(split_validation(items[:2], 0.99).train) == 1
    with pytest.raises(ValueError, match="fraction"):
        split_validation(items, 1.0)
