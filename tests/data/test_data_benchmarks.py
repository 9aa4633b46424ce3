"""Benchmark readers: the real shared files (skipped if absent) and error paths on tiny copies."""

from __future__ import annotations

from collections import Counter

import pytest

from attnkd.data.benchmarks import (
    LabeledPair,
    SentencePair,
    read_mrpc,
    read_rte,
    read_sst2,
    read_stsb,
)
from attnkd.data.text import (
    detokenize_wikitext,
    read_tinyshakespeare,
    read_wikitext2,
    split_tokenized_sentences,
)
from attnkd.errors import DataError

# --- the real files: counts from each folder's PROVENANCE.md -----------------------------


@pytest.mark.parametrize("split,n", [("train", 5749), ("dev", 1500)])
def test_real_stsb_matches_a_naive_tab_split(shared_data, split, n):
    root = shared_data("stsb")
    pairs = read_stsb(split, root)
    assert len(pairs) == n and pairs.stats.skipped == 0
    name = {"train": "sts-train.csv", "dev": "sts-dev.csv"}[split]
    lines = (root / "stsb" / name).read_text(encoding="utf-8").splitlines()
    naive = [ln.split("\t") for ln in lines]
    assert [(f[5].strip(), f[6].strip(), float(f[4])) for f in naive] == [
        (p.sentence1, p.sentence2, p.score) for p in pairs
    ]
    assert [p.line for p in pairs] == list(range(1, n + 1))
    assert all(0.0 <= p.score <= 5.0 for p in pairs)
    if split == "train":
        assert sum(len(f) == 9 for f in naive) == 197
        assert pairs[0] == SentencePair(
            "A plane is taking off.", "An air plane is taking off.", 5.0
        )


def test_real_sst2(shared_data):
    rows = read_sst2("train", shared_data("sst2"))
    assert len(rows) == 67349
    assert Counter(r.label for r in rows) == {1: 37569, 0: 29780}
    assert rows[0].sentence == "hide new secretions from the parental units"
    assert rows[0].line == 2
    assert not any(r.sentence != r.sentence.strip() for r in rows)


@pytest.mark.parametrize("split,n,ones", [("train", 3668, 2474), ("dev", 408, 279)])
def test_real_mrpc(shared_data, split, n, ones):
    rows = read_mrpc(split, shared_data("mrpc"))
    assert len(rows) == n
    assert sum(r.label for r in rows) == ones
    if split == "train":
        assert rows[0].sentence1.startswith("Amrozi accused his brother")
        assert rows[0].label == 1 and rows[0].line == 2


@pytest.mark.parametrize("split,n,entail", [("train", 2490, 1249), ("dev", 277, 146)])
def test_real_rte(shared_data, split, n, entail):
    rows = read_rte(split, shared_data("rte"))
    assert len(rows) == n
    assert sum(r.label == 0 for r in rows) == entail
    if split == "train":
        assert rows[0] == LabeledPair(
            "No Weapons of Mass Destruction Found in Iraq Yet.",
            "Weapons of Mass Destruction Found in Iraq.",
            1,
        )


def test_real_wikitext2(shared_data):
    root = shared_data("wikitext2")
    raw = (root / "wikitext2" / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    assert len(raw) == 3760
    body = [i + 1 for i, ln in enumerate(raw) if ln.strip() and not ln.strip().startswith("= ")]
    lines = read_wikitext2("valid", root, sentences=False)
    assert [r.line for r in lines] == body
    chunks = read_wikitext2("valid", root)
    assert len(chunks) > 2 * len(lines)
    for row in chunks[:200]:
        assert row.text in raw[row.line - 1]
    assert sorted({r.line for r in chunks}) == body
    detok = read_wikitext2("valid", root, detokenize=True)
    assert len(detok) == len(chunks)
    assert not any("@-@" in r.text or " , " in r.text for r in detok)


def test_real_tinyshakespeare(shared_data):
    root = shared_data("tinyshakespeare")
    text = (root / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert len(text) == 1_115_394
    blocks = [b for b in text.split("\n\n") if b.strip()]
    paragraphs = read_tinyshakespeare(root, speakers=True)
    assert len(paragraphs) == len(blocks)
    assert paragraphs[0].text == "First Citizen: Before we proceed any further, hear me speak."
    speeches = read_tinyshakespeare(root)
    assert (
        speeches[0].text == "Before we proceed any further, hear me speak."
        and speeches[0].line == 2
    )
    lines = read_tinyshakespeare(root, mode="lines", speakers=True)
    assert len(lines) == sum(1 for ln in text.splitlines() if ln.strip())
    no_speakers = read_tinyshakespeare(root, mode="lines")
    assert len(lines) - len(no_speakers) == len(blocks)  # each block opens with its speaker


# --- tiny files in a temporary data dir --------------------------------------------------

STSB_OK = "g\tf\t2012\t0001\t4.5\tA man.\tA person.\n"


def test_stsb_extra_columns_and_stripping(write, tmp_path):
    write("stsb/sts-train.csv", STSB_OK + 'g\tf\t2012\t2\t0\t"Hi .\tBye "\tsrc1\tsrc2\n')
    pairs = read_stsb("train", tmp_path)
    assert pairs == [SentencePair("A man.", "A person.", 4.5), SentencePair('"Hi .', 'Bye "', 0.0)]


@pytest.mark.parametrize(
    "row,words",
    [
        (
            "g\tf\t2012\t2\tfive\tA.\tB.\n",
            "expected a number for the score \\(field 5\\), found 'five'",
        ),
        ("g\tf\t2012\t2\t5.5\tA.\tB.\n", "score in \\[0, 5\\]"),
        ("g\tf\t2012\t2\t3.0\tA.\tB.\tx\n", "expected 7 or 9 tab-separated fields, found 8"),
        ("g\tf\t2012\t2\t3.0\t  \tB.\n", "empty sentence1"),
    ],
)
def test_stsb_bad_rows(write, tmp_path, row, words, check_data_error):
    path = write("stsb/sts-dev.csv", STSB_OK + row + STSB_OK)
    with pytest.raises(DataError) as info:
        read_stsb("dev", tmp_path)
    check_data_error(info.value, path, 2, words)
    kept = read_stsb("dev", tmp_path, bad_rows="skip")
    assert len(kept) == 2 and kept.stats.skipped == 1 and [p.line for p in kept] == [1, 3]


def test_missing_split_file_names_path_and_setting(tmp_path, monkeypatch, check_data_error):
    monkeypatch.setenv("ATTNKD_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        read_stsb("train")
    check_data_error(info.value, tmp_path / "stsb" / "sts-train.csv", None, "ATTNKD_DATA_DIR")
    with pytest.raises(ValueError, match="unknown STS-B split 'valid'"):
        read_stsb("valid", tmp_path)


def test_glue_label_errors(write, tmp_path, check_data_error):
    path = write("sst2/train.tsv", "sentence\tlabel\ngood \t1\nbad \t2\n")
    with pytest.raises(DataError) as info:
        read_sst2("train", tmp_path)
    check_data_error(info.value, path, 3, "expected label in \\['0', '1'\\], found '2'")
    path = write("rte/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    with pytest.raises(DataError) as info:
        read_rte("dev", tmp_path)
    check_data_error(info.value, path, 2, "entailment", "maybe")


def test_glue_missing_column_is_reported_at_header(write, tmp_path, check_data_error):
    path = write("mrpc/train.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\n1\t1\t2\tA\n")
    with pytest.raises(DataError) as info:
        read_mrpc("train", tmp_path)
    check_data_error(info.value, path, 1, "no column '#2 String'")


def test_mrpc_bom_header(write, tmp_path):
    write("mrpc/dev.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tA .\tB .\n")
    assert read_mrpc("dev", tmp_path) == [LabeledPair("A .", "B .", 0)]


def test_wikitext_helpers_golden():
    text = "It is red @-@ tipped , 3 @.@ 5 cm ( 1 in ) long . He did n't go ! Why ?"
    assert split_tokenized_sentences(text) == [
        "It is red @-@ tipped , 3 @.@ 5 cm ( 1 in ) long .",
        "He did n't go !",
        "Why ?",
    ]
    assert detokenize_wikitext(text) == "It is red-tipped, 3.5 cm (1 in) long. He didn't go! Why?"
    assert split_tokenized_sentences("H. americanus is big .") == ["H. americanus is big ."]


def test_wikitext_and_shakespeare_on_tiny_files(write, tmp_path):
    write(
        "wikitext2/wiki.valid.tokens", " \n = Title = \n \n One . Two @-@ three . \n = = Sub = = \n"
    )
    rows = read_wikitext2("valid", tmp_path, detokenize=True)
    assert [(r.text, r.line) for r in rows] == [("One.", 4), ("Two-three.", 4)]
    write("tinyshakespeare/input.txt", "A:\nHi there.\nYes:\n\nBOTH LORDS:\nGo.\n")
    speeches = read_tinyshakespeare(tmp_path)
    assert [(r.text, r.line) for r in speeches] == [("Hi there. Yes:", 2), ("Go.", 6)]
