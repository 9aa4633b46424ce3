"""Fixtures of the sequence-classification tests: a tiny data folder laid out like the shared
one (sst2/train.tsv with every phrase of its sentences as a row, mrpc/ and rte/ train and dev),
a tiny BERT folder and its tokenizer (from tests/integration/int_helpers.py)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from int_helpers import VOCAB, make_sentence, make_tokenizer, tiny_bert  # noqa: E402

from tiny_lms import single_thread

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def sst2_rows(n_sentences: int, seed: int = 0) -> list[tuple[str, int]]:
    """Sentences labelled by a word they hold ('good'/'fun' positive), plus phrases of each."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_sentences):
        words = make_sentence(rng).split()
        label = rng.randint(0, 1)
        words.insert(2, "good" if label else "bad")
        rows.append((" ".join(words), label))
        for _ in range(3):  # SST-2 style phrases: spans of the sentence
            a = rng.randrange(len(words) - 1)
            b = rng.randrange(a + 1, len(words) + 1)
            rows.append((" ".join(words[a:b]), label))
    return rows


def pair_rows(n: int, seed: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s1 = make_sentence(rng)
        same = rng.randint(0, 1)
        s2 = s1.replace(" is ", " is very ") if same else make_sentence(rng)
        out.append((s1, s2, same))
    return out


def write_cls_data(root: Path) -> Path:
    (root / "sst2").mkdir(parents=True)
    lines = ["sentence\tlabel"] + [f"{s} \t{y}" for s, y in sst2_rows(120)]
    (root / "sst2" / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    head = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    for split, n, seed in (("train", 150, 1), ("dev", 30, 2)):
        (root / "mrpc").mkdir(exist_ok=True)
        rows = [f"{y}\t{i}\t{i + 1}\t{a}\t{b}" for i, (a, b, y) in enumerate(pair_rows(n, seed))]
        (root / "mrpc" / f"{split}.tsv").write_text("\n".join([head, *rows]) + "\n", "utf-8")
        (root / "rte").mkdir(exist_ok=True)
        names = ("entailment", "not_entailment")
        rows = [f"{i}\t{a}\t{b}\t{names[1 - y]}" for i, (a, b, y) in enumerate(pair_rows(n, seed))]
        text = "\n".join(["index\tsentence1\tsentence2\tlabel", *rows]) + "\n"
        (root / "rte" / f"{split}.tsv").write_text(text, "utf-8")
    # a dev sentence repeated in train: hygiene must remove that training pair
    dev_first = (root / "mrpc" / "dev.tsv").read_text("utf-8").splitlines()[1].split("\t")
    with (root / "mrpc" / "train.tsv").open("a", encoding="utf-8") as fh:
        fh.write(f"1\t9\t10\t{dev_first[3]}\ta dog is eating .\n")
    return root


@pytest.fixture(scope="session")
def cls_data(tmp_path_factory) -> Path:
    return write_cls_data(tmp_path_factory.mktemp("clsdata"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny pretrained-encoder folder (BertModel weights, no head) with its tokenizer."""
    folder = tmp_path_factory.mktemp("models") / "tiny-bert"
    vocab = folder.parent / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tiny_bert(seed=0).save_pretrained(folder)
    make_tokenizer(vocab).save_pretrained(folder)
    return folder
