"""Evaluation hygiene: one key for every spelling of a sentence, and nothing held out is trained.

The real-data tests read $ATTNKD_DATA_DIR and skip when a benchmark folder is absent.
"""

from __future__ import annotations

from attnkd.data.corpus import build_corpus, normalize_sentence
from attnkd.data.overlap import Exclusions, sentence_key, shared_keys
from attnkd.data.sources import held_out_sentences, source_sentences

# The same sentence as two benchmark files spell it (MRPC train is tokenised, STS-B dev is not).
MRPC = (
    "Singapore is already the United States ' 12th-largest trading partner , with two-way "
    "trade totaling more than $ 34 billion ."
)
STSB = (
    "Singapore is already the United States' 12th-largest trading partner, with two-way "
    "trade totaling more than $34 billion."
)


def test_one_key_for_every_spelling():
    assert sentence_key(MRPC) == sentence_key(STSB)
    same = [
        (
            '" Leaving aside attorney fees , we \'re dealing , " said Gammerman .',
            '"Leaving aside attorney fees, we\'re dealing," said Gammerman.',
        ),
        ("it 's a -LRB- great -RRB- film , is n't it ?", "It's a (great) film, isn't it?"),
        ("`` quoted '' text", "\u201cQuoted\u201d text"),
        ("the 1 @,@ 000 @-@ year @-@ old city @.@ 5", "The 1,000-year-old city.5"),
        ("a <unk> word", "a word"),
        ("Caf\u00e9 \uff21\uff22\uff23 \ufb01ne", "cafe ABC fine"),  # accent, full-width, ligature
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("  A  man\tis HERE ", "a man is here"),
    ]
    for a, b in same:
        assert sentence_key(a) == sentence_key(b), (a, b)
    assert sentence_key("A man is riding a horse.") != sentence_key("A man is riding a bike.")
    assert sentence_key("...") != sentence_key("?!") and sentence_key("...") != ""
    assert normalize_sentence(MRPC) == sentence_key(MRPC)


def test_tokenised_spelling_of_an_eval_sentence_is_not_trained_on(write):
    # Before keys ignored punctuation spacing, the MRPC spelling slipped past the STS-B one.
    train = write("train.txt", f"{MRPC}\nAn unrelated training sentence.\n")
    corpus = build_corpus([f"file:{train}"], exclude={"stsb:dev": [STSB]})
    assert corpus.sentences == ["An unrelated training sentence."]
    assert corpus.excluded == 1 and corpus.counts[f"file:{train}"].excluded == 1
    c = corpus.exclusions["stsb:dev"]
    assert (c.split_sentences, c.found, c.removed) == (1, 1, 1)


def test_exclusions_are_counted_per_split(write):
    train = write("t.txt", "Alpha one.\nalpha ONE\nBeta two.\nGamma three.\nDelta four.\n")
    corpus = build_corpus(
        [f"file:{train}"],
        exclude={"eval": ["alpha one", "Never seen."], "select": ["Beta  two", "alpha one!"]},
    )
    assert sorted(corpus.sentences) == ["Delta four.", "Gamma three."]
    ev, sel = corpus.exclusions["eval"], corpus.exclusions["select"]
    assert (ev.split_sentences, ev.found, ev.removed) == (2, 1, 2)  # both spellings removed
    assert (sel.split_sentences, sel.found, sel.removed) == (2, 2, 3)
    assert corpus.excluded == 3  # a sentence in both sets is dropped once
    summary = corpus.summary()
    assert "held out eval: 2 distinct sentences, 1 found" in summary
    assert "3 held-out sentences removed" in summary
    plain = build_corpus([f"file:{train}"], exclude=["Gamma three"])
    assert plain.exclusions["exclude"].removed == 1


def test_dedup_uses_the_same_key(write):
    train = write("t.txt", f"{MRPC}\n{STSB}\nSomething else entirely.\n")
    corpus = build_corpus([f"file:{train}"])
    assert len(corpus) == 2 and corpus.duplicates_removed == 1
    assert MRPC in corpus.sentences  # the first spelling is kept


def test_exclusions_object_matches_keys():
    ex = Exclusions({"a": ["x y z"], "b": ["X-Y-Z", "q"]})
    assert ex.hit(sentence_key("xyz")) and not ex.hit(sentence_key("w"))
    assert ex.counts["a"].removed == 1 and ex.counts["b"].found == 1
    assert shared_keys(["Hello, world"], ["hello world !", "x"]) == {"helloworld"}


def test_held_out_file_specs(write, tmp_path):
    txt = write("test.txt", "first line\nsecond line\n")
    tsv = write("test.tsv", "id\tsentence\tother\n1\tA b.\tC d.\n")
    assert list(held_out_sentences(str(txt))) == ["first line", "second line"]
    assert list(held_out_sentences(f"file:{txt}")) == ["first line", "second line"]
    assert list(held_out_sentences(f"{tsv}#sentence,other")) == ["A b.", "C d."]
    assert list(held_out_sentences(f"file:{tsv}")) == ["A b."]


# --- real benchmark files ------------------------------------------------------------------


def test_real_mrpc_train_holds_stsb_dev_sentences(shared_data):
    root = shared_data("mrpc")
    shared_data("stsb")
    dev = source_sentences("stsb:dev", root)
    assert MRPC in source_sentences("mrpc:train", root) and STSB in dev
    corpus = build_corpus(["mrpc:train"], root, exclude={"stsb:dev": dev})
    assert MRPC not in corpus.sentences
    assert corpus.exclusions["stsb:dev"].found > 200  # about 245 distinct sentences
    assert not shared_keys(corpus.sentences, dev)
