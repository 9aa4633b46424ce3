"""The sentence task's splits and corpus: selection apart from evaluation, nothing held out in
training. The recipe test reads the default recipe's real sources from $ATTNKD_DATA_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnkd.config.io import load_config
from attnkd.config.schema import DistillConfig
from attnkd.data.overlap import sentence_keys, shared_keys
from attnkd.errors import ConfigError
from attnkd.tasks import sentence
from attnkd.tasks.sentence import EvalPairs, build_sentence_corpus, eval_splits, held_out_files

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "minilm-sentence.yaml"
SOURCES = ("stsb", "sst2", "mrpc", "rte", "wikitext2")


def test_default_recipe_trains_on_no_held_out_sentence(shared_data):
    root = None
    for folder in SOURCES:
        root = shared_data(folder)
    cfg = load_config(RECIPE)
    cfg.data.data_dir = str(root)
    assert cfg.data.eval_task == "stsb:dev" and cfg.data.select_task == "stsb:val"
    splits = eval_splits(cfg)
    corpus = build_sentence_corpus(cfg, splits)  # exactly as the task's setup() builds it
    trained = sentence_keys(corpus.sentences)
    assert not trained & sentence_keys(splits.eval.sentences())
    assert not trained & sentence_keys(splits.select.sentences())
    assert not shared_keys(splits.eval.sentences(), splits.select.sentences())
    dev, val = corpus.exclusions["stsb:dev"], corpus.exclusions["stsb:val"]
    assert dev.found > 400 and dev.removed >= dev.found  # STS-B train and MRPC hold dev text
    assert val.found == val.split_sentences  # the selection split is cut from STS-B train
    assert corpus.excluded > 0 and len(corpus) > 80_000
    assert corpus.counts["mrpc:train"].excluded > 200  # the tokenised spellings
    assert "held out stsb:dev" in corpus.summary()
    assert splits.select_dropped > 0 and len(splits.select.scores) > 500


def _write_stsb(root: Path, name: str, pairs: list[tuple[str, str]]) -> None:
    (root / "stsb").mkdir(parents=True, exist_ok=True)
    rows = [f"g\tf\ty\t{i:04d}\t{i % 5}.0\t{a}\t{b}" for i, (a, b) in enumerate(pairs)]
    (root / "stsb" / name).write_text("\n".join(rows) + "\n", encoding="utf-8")


def _cfg(root: Path, **data) -> DistillConfig:
    cfg = DistillConfig()
    cfg.data.data_dir = str(root)
    cfg.data.val_fraction = 0.5
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_selection_split_leaves_out_pairs_sharing_a_dev_sentence(tmp_path):
    train = [(f"Train sentence {i}.", f"Other train sentence {i}.") for i in range(20)]
    train[3] = ("A man is riding a horse .", "Something unique here.")  # dev, tokenised
    train[7] = ("Nothing shared.", "a DOG runs")
    _write_stsb(tmp_path, "sts-train.csv", train)
    _write_stsb(tmp_path, "sts-dev.csv", [("A man is riding a horse.", "A dog runs!")] * 3)
    cfg = _cfg(tmp_path)
    full = sentence.split_validation(sentence.read_stsb("train", tmp_path), 0.5, 0).val
    splits = eval_splits(cfg)
    touching = [p for p in full if p.sentence1 in ("A man is riding a horse .", "Nothing shared.")]
    assert splits.select_dropped == len(touching)
    assert len(splits.select.scores) == len(full) - len(touching)
    assert not shared_keys(splits.eval.sentences(), splits.select.sentences())


def test_select_task_equal_to_eval_task_is_refused(tmp_path):
    _write_stsb(tmp_path, "sts-train.csv", [(f"a {i}", f"b {i}") for i in range(10)])
    _write_stsb(tmp_path, "sts-dev.csv", [("c d", "e f")] * 3)
    for task in ("stsb:dev", "stsb:val"):
        with pytest.raises(ConfigError, match=r"data\.select_task.*also data\.eval_task"):
            eval_splits(_cfg(tmp_path, eval_task=task, select_task=task))


def test_select_task_sharing_sentences_is_refused(tmp_path, monkeypatch):
    def fake(cfg, task=None):
        tail = "The cat sat." if task == "stsb:dev" else "the cat  sat"
        return EvalPairs(task, [f"{task} one", tail], [f"{task} two", f"{task} 3"], [1.0, 2.0])

    monkeypatch.setattr(sentence, "eval_pairs", fake)
    with pytest.raises(ConfigError) as info:
        eval_splits(_cfg(tmp_path))
    msg = str(info.value)
    assert "data.select_task" in msg and "shares 1 sentences" in msg and "the cat  sat" in msg


def test_exclude_files_are_held_out_and_a_missing_one_is_named(tmp_path):
    _write_stsb(tmp_path, "sts-train.csv", [(f"Train sentence {i}.", f"b {i}") for i in range(20)])
    _write_stsb(tmp_path, "sts-dev.csv", [("c d e f g h", "e f g h i j")] * 3)
    public = tmp_path / "public_test.tsv"
    public.write_text("id\tsentence\n1\ttrain  SENTENCE 4\n2\tTrain sentence 5 !\n")
    cfg = _cfg(tmp_path, train_sources=["stsb:train"], exclude_files=[str(public)])
    corpus = build_sentence_corpus(cfg, eval_splits(cfg))
    held = corpus.exclusions[str(public)]
    assert (held.split_sentences, held.found, held.removed) == (2, 2, 2)
    assert not shared_keys(corpus.sentences, ["train sentence 4", "train sentence 5"])
    assert "Train sentence 6." in corpus.sentences or "Train sentence 6." in str(eval_splits(cfg))
    missing = tmp_path / "nope" / "test.txt"
    cfg.data.exclude_files = [str(public), f"file:{missing}"]
    with pytest.raises(ConfigError) as info:
        held_out_files(cfg)
    assert "data.exclude_files[1]" in str(info.value) and str(missing) in str(info.value)
