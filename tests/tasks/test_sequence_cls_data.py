"""Held-out hygiene of the classification splits: no evaluation or selection sentence (nor, for
SST-2, any phrase of one) is trained on; the evaluation split is the same for every seed."""

from __future__ import annotations

import random

import pytest

from attnkd.data import cls_splits as cs
from attnkd.data.overlap import sentence_key
from attnkd.errors import ConfigError


def _naive_whole(texts):
    """O(n²) reference: a text is whole unless its words are a contiguous run of a longer one's."""
    toks = [cs.words(t) for t in texts]
    out, seen = [], set()
    for i, w in enumerate(toks):
        if not w or w in seen:
            continue
        seen.add(w)
        inside = any(
            len(v) > len(w) and any(v[k : k + len(w)] == w for k in range(len(v) - len(w) + 1))
            for v in toks
        )
        if not inside:
            out.append(i)
    return out


def test_whole_sentences_matches_naive_reference():
    rng = random.Random(3)
    words = ["a", "b", "c", "d", "e"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(300)]
    texts += ["A , b", "a b", "ab", "b a b"]  # punctuation and case do not matter; "ab" is a word
    assert cs.whole_sentences(texts) == _naive_whole(texts)


@pytest.fixture
def small_sst2(monkeypatch):
    monkeypatch.setattr(cs, "SST2_HELDOUT", 15)


def test_sst2_heldout_and_val_phrases_never_trained_on(cls_data, small_sst2):
    sp = cs.build_splits("sst2:heldout", "sst2:val", cls_data, seed=1)
    assert len(sp.eval) == 15 and len(sp.select) == 15
    held = [e.text for e in sp.eval + sp.select]
    assert not {sentence_key(t) for t in held} & {sentence_key(e.text) for e in sp.train}
    banned = set().union(*(cs.spans(cs.words(t)) for t in held))
    leaked = [e.text for e in sp.train if cs.words(e.text) in banned]
    assert not leaked, leaked[:3]
    assert sp.removed["sst2:heldout"] > 0 and sp.removed["sst2:val"] > 0  # phrases were removed
    whole = {cs.words(t) for t in held}
    rows = [cs.words(e.text) for e in sp.train]
    for w in whole:  # held-out rows are whole sentences, not phrases of a training row
        assert not any(len(r) > len(w) and " ".join(w) in " ".join(r) for r in rows)


def test_sst2_eval_split_is_fixed_and_select_follows_the_seed(cls_data, small_sst2):
    a = cs.build_splits("sst2:heldout", "sst2:val", cls_data, seed=0)
    b = cs.build_splits("sst2:heldout", "sst2:val", cls_data, seed=1)
    assert a.eval == b.eval
    assert a.select != b.select
    assert not {e.text for e in a.eval} & {e.text for e in a.select}


@pytest.mark.parametrize("name", ["mrpc", "rte"])
def test_pairs_no_dev_or_val_sentence_in_training(cls_data, name):
    sp = cs.build_splits(f"{name}:dev", f"{name}:val", cls_data, val_fraction=0.2, seed=0)
    assert sp.eval and sp.select and sp.train
    train_keys = {sentence_key(s) for e in sp.train for s in e.sentences()}
    for split in (sp.eval, sp.select):
        assert not train_keys & {sentence_key(s) for e in split for s in e.sentences()}
    assert not {sentence_key(s) for e in sp.select for s in e.sentences()} & {
        sentence_key(s) for e in sp.eval for s in e.sentences()
    }
    assert all(e.text_pair for e in sp.train)
    if name == "mrpc":  # the fixture repeats a dev sentence in one training pair
        assert sp.removed["mrpc:dev"] >= 1


def test_mrpc_dev_labels_read_as_glue_numbers_them(cls_data):
    sp = cs.build_splits("mrpc:dev", "mrpc:val", cls_data)
    assert sp.label_names == ("not_equivalent", "equivalent")
    rte = cs.build_splits("rte:dev", "rte:val", cls_data)
    assert rte.label_names == ("entailment", "not_entailment")
    assert {e.label for e in rte.eval} <= {0, 1}


@pytest.mark.parametrize(
    ("ev", "sel", "key"),
    [
        ("sst2:dev", "sst2:val", "data.eval_task"),
        ("mrpc:dev", "stsb:val", "data.select_task"),
        ("mrpc:dev", "rte:val", "data.select_task"),
    ],
)
def test_bad_split_names_are_config_errors(cls_data, ev, sel, key):
    with pytest.raises(ConfigError) as err:
        cs.build_splits(ev, sel, cls_data)
    assert err.value.key == key
