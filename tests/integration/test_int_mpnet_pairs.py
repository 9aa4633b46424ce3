"""Pair batches (``data.pair_batches``) for the cached sentence teachers: whole training pairs per
batch, held-out sentences never inside one, the pair ranking term read at the right rows, and
the settings that need them refused with the key named."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from int_helpers import make_sentence

from attnkd.config.io import apply_overrides
from attnkd.config.schema import LossTermConfig, TeacherEntry, default_recipe
from attnkd.data.overlap import sentence_key
from attnkd.distill import run_distill
from attnkd.errors import ConfigError
from attnkd.eval.encode import encode
from attnkd.losses import pair_similarities, similarity_rank_loss
from attnkd.tasks.sentence import build_sentence_corpus, eval_splits
from attnkd.tasks.sentence_pairs import PairBatches, corpus_pairs
from attnkd.validate import validate


@pytest.fixture
def pairs_cfg(base_overrides, teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKD_CACHE_DIR", str(tmp_path / "cache"))

    def make(*extra: str):
        plain = [o for o in base_overrides if not o.startswith(("teacher.name", "student.layers"))]
        teachers = f"teachers=[{{name: {teacher_dir}, label: bert}}]"
        terms = "losses=[{name: sentence_similarity}, {name: sentence_pair_rank}]"
        return apply_overrides(default_recipe(), [
            *plain, teachers, f"student.init={teacher_dir}", "data.pair_batches=true", terms,
            *extra])  # fmt: skip

    return make


def test_pairs_hold_no_held_out_sentence_and_every_kept_pair_is_a_source_pair(pairs_cfg):
    from attnkd.data.sources import source_pairs

    cfg = pairs_cfg()
    splits = eval_splits(cfg)
    corpus = build_sentence_corpus(cfg, splits)
    got = corpus_pairs(cfg, corpus)
    held = {sentence_key(s) for s in splits.eval.sentences() | splits.select.sentences()}
    read = source_pairs("stsb:train", cfg.data.data_dir)
    source = {frozenset(map(sentence_key, p)) for p in read}
    assert got.pairs and got.read == {"stsb:train": 40}  # sst2:train has no pairs
    for a, b in got.pairs:
        keys = {sentence_key(corpus.sentences[a]), sentence_key(corpus.sentences[b])}
        assert not keys & held and frozenset(keys) in source
    assert len(got.pairs) + got.dropped + got.repeated == 40
    assert got.dropped >= len(splits.select.scores)  # every selection pair is held out whole


def test_pair_batches_cover_each_pair_once_per_epoch_deterministically(pairs_cfg, tokenizer):
    rng = random.Random(0)
    sentences = sorted({make_sentence(rng) for _ in range(30)})
    pairs = [(i, i + 1) for i in range(0, 28, 2)] + [(3, 10)]
    b = PairBatches(sentences, pairs, tokenizer, 4, 32, seed=5)
    assert b.num_batches == 7
    seen = []
    for i in range(b.num_batches):
        batch = b.batch_at(0, i)
        rows = batch["rows"].tolist()
        assert batch["input_ids"].shape[0] == 4 and batch["pairs"].tolist() == [[0, 1], [2, 3]]
        seen += [(rows[0], rows[1]), (rows[2], rows[3])]
        ids = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
        assert ids == tokenizer(sentences[rows[1]], truncation=True, max_length=32)["input_ids"]
    assert len(set(seen)) == 14 and set(seen) <= set(pairs)
    again = PairBatches(sentences, pairs, tokenizer, 4, 32, seed=5)
    assert again.pairs_at(1, 2).tolist() == b.pairs_at(1, 2).tolist()
    assert [b.pairs_at(0, i).tolist() for i in range(7)] != [b.pairs_at(1, i).tolist()
                                                             for i in range(7)]  # fmt: skip
    with pytest.raises(ConfigError, match="train.batch_size.*even"):
        PairBatches(sentences, pairs, tokenizer, 5, 32, seed=0)


def test_pair_rank_term_reads_the_teachers_similarity_of_each_batch_pair(teacher_dir, tokenizer):
    """Targets in corpus order: the term equals the rank loss of the student's pair cosines
    against the teacher's cosines of the same two rows; shuffled targets give another value."""
    from attnkd.models.load import load_encoder
    from attnkd.tasks.sentence_teachers import SentenceTargetDistiller

    rng = random.Random(1)
    sentences = sorted({make_sentence(rng) for _ in range(24)})
    t = load_encoder(str(teacher_dir))
    targets = encode(t.model, t.tokenizer, sentences, max_length=32)
    entry = TeacherEntry(name=str(teacher_dir), losses=[LossTermConfig("sentence_pair_rank")])
    module = SentenceTargetDistiller(t.model.eval(), [entry], [targets])
    shuffled = SentenceTargetDistiller(t.model, [entry], [targets[torch.randperm(len(targets))]])
    b = PairBatches(sentences, [(i, i + 1) for i in range(0, 24, 2)], t.tokenizer, 8, 32, 0)
    with torch.no_grad():
        for i in range(b.num_batches):
            batch = b.batch_at(0, i)
            mine = pair_similarities(targets[batch["rows"]], batch["pairs"])
            want = similarity_rank_loss(mine, mine)
            got = module(batch)["t0:sentence_pair_rank"]
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
            assert abs(float(shuffled(batch)["loss"]) - float(want)) > 1e-3


def test_a_pair_batch_run_trains_and_reports_its_pairs(pairs_cfg):
    cfg = pairs_cfg("data.mined_pairs=1")
    validate(cfg)
    results = run_distill(cfg, progress=False)
    pairs = results["train"]["pairs"]
    assert pairs["kept"] > 0 and pairs["read"] == {"stsb:train": 40} and pairs["mined"] > 0
    assert results["train"]["held_out"]["stsb:val"]["removed"] > 0
    assert results["train"]["sources"]["stsb:train"]["excluded"] == results["train"][
        "held_out_removed"]  # fmt: skip
    run = Path(cfg.output_dir) / cfg.name
    logged = {k for x in (run / "metrics.jsonl").read_text().splitlines()
              for k in json.loads(x).get("terms", json.loads(x))}  # fmt: skip
    assert any("ensemble:sentence_pair_rank" in k for k in logged)


def test_settings_that_need_pairs_are_refused_naming_the_key(pairs_cfg, base_overrides):
    with pytest.raises(ConfigError, match=r"losses\[1\]\.name.*data.pair_batches"):
        validate(pairs_cfg("data.pair_batches=false"), check_models=False, check_data=False)
    with pytest.raises(ConfigError, match="train.batch_size.*even"):
        validate(pairs_cfg("train.batch_size=5"), check_models=False, check_data=False)
    with pytest.raises(ConfigError, match="data.pair_batches.*no training pair"):
        cfg = pairs_cfg("data.train_sources=[sst2:train]")
        corpus_pairs(cfg, build_sentence_corpus(cfg, eval_splits(cfg)))
    live = apply_overrides(default_recipe(), [*base_overrides, "data.pair_batches=true"])
    with pytest.raises(ConfigError, match="data.pair_batches.*live teacher"):
        run_distill(replace(live, name="live"), progress=False)


def test_mined_pairs_are_each_rows_nearest_others_by_the_weighted_teacher_similarity():
    from attnkd.tasks.sentence_pairs import mine_pairs

    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(11, 5, generator=g), torch.randn(11, 3, generator=g)
    got = mine_pairs([a, b], [2.0, 1.0], k=2, block=4)  # blocks smaller than the corpus
    ca = torch.nn.functional.cosine_similarity(a[:, None], a[None], dim=-1)
    cb = torch.nn.functional.cosine_similarity(b[:, None], b[None], dim=-1)
    sims = (2 * ca + cb) / 3
    want = []
    for i in range(11):
        order = [j for j in sims[i].argsort(descending=True).tolist() if j != i]
        want += [(i, order[0]), (i, order[1])]
    assert got == want
    with pytest.raises(ConfigError, match="data.mined_pairs"):
        mine_pairs([a], [1.0], k=11)


def test_mined_pairs_join_the_source_pairs_without_repeats(pairs_cfg):
    cfg = pairs_cfg()
    corpus = build_sentence_corpus(cfg, eval_splits(cfg))
    plain = corpus_pairs(cfg, corpus)
    a, b = plain.pairs[0]
    got = corpus_pairs(cfg, corpus, [(b, a), (a, a), (0, 1), (1, 0)])
    assert got.pairs[: len(plain.pairs)] == plain.pairs
    extra = [] if (0, 1) in plain.pairs or (1, 0) in plain.pairs else [(0, 1)]
    assert got.pairs[len(plain.pairs):] == extra and got.mined == len(extra)
    with pytest.raises(ConfigError, match="data.mined_pairs.*pair_batches"):
        validate(pairs_cfg("data.mined_pairs=2", "data.pair_batches=false",
                           "losses=[{name: sentence_similarity}]"), check_models=False,
                 check_data=False)  # fmt: skip


def test_the_pair_rank_term_refuses_a_live_teacher(teacher_dir):
    from attnkd.losses.terms import TERMS, TermError
    from attnkd.models.adapters import geometry
    from attnkd.models.load import load_encoder

    g = geometry(load_encoder(str(teacher_dir)).model.config)
    with pytest.raises(TermError, match="data.pair_batches"):
        TERMS.get("sentence_pair_rank").cls(LossTermConfig("sentence_pair_rank"), g, g)
