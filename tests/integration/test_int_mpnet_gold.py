"""Gold STS-B scores mixed into the pair ranking target (``sentence_pair_rank`` with
``gt_weight``): each kept pair carries its own score / 5, batches carry them beside the pairs,
the term ranks against the mix, and misuse is refused naming the key."""

from __future__ import annotations

import math
import random

import pytest
import torch
from int_helpers import make_sentence

from attnkd.config.io import apply_overrides
from attnkd.config.schema import LossTermConfig, TeacherEntry, default_recipe
from attnkd.data.benchmarks import read_stsb
from attnkd.data.overlap import sentence_key
from attnkd.errors import ConfigError
from attnkd.eval.encode import encode
from attnkd.losses import mix_gold, pair_similarities, similarity_rank_loss
from attnkd.tasks.sentence import build_sentence_corpus, eval_splits
from attnkd.tasks.sentence_pairs import PairBatches, corpus_pairs
from attnkd.validate import validate


@pytest.fixture
def gold_cfg(base_overrides, teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKD_CACHE_DIR", str(tmp_path / "cache"))

    def make(term: str = "{name: sentence_pair_rank, gt_weight: 0.5}", *extra: str):
        plain = [o for o in base_overrides if not o.startswith(("teacher.name", "student.layers"))]
        teachers = f"teachers=[{{name: {teacher_dir}, label: bert, losses: [{term}]}}]"
        return apply_overrides(default_recipe(), [
            *plain, teachers, "losses=[]", f"student.init={teacher_dir}",
            "data.pair_batches=true", *extra])  # fmt: skip

    return make


def test_each_kept_pair_carries_its_own_gold_score_and_mined_pairs_none(gold_cfg):
    cfg = gold_cfg()
    corpus = build_sentence_corpus(cfg, eval_splits(cfg))
    scores = {frozenset((sentence_key(p.sentence1), sentence_key(p.sentence2))): p.score / 5
              for p in read_stsb("train", cfg.data.data_dir)}  # fmt: skip
    got = corpus_pairs(cfg, corpus, [(0, 1)])
    assert len(got.gold) == len(got.pairs) and got.pairs
    for (a, b), g in zip(got.pairs[: len(got.pairs) - got.mined], got.gold):
        key = frozenset((sentence_key(corpus.sentences[a]), sentence_key(corpus.sentences[b])))
        assert g == pytest.approx(scores[key])
    assert all(math.isnan(g) for g in got.gold[len(got.pairs) - got.mined :])
    assert got.as_dict()["scored"] == len(got.pairs) - got.mined


def test_pair_batches_carry_the_gold_of_the_pairs_they_hold(tokenizer):
    rng = random.Random(2)
    sentences = sorted({make_sentence(rng) for _ in range(20)})
    pairs = [(i, i + 1) for i in range(0, 20, 2)]
    gold = [i / 10 if i % 3 else float("nan") for i in range(10)]
    b = PairBatches(sentences, pairs, tokenizer, 4, 32, seed=3, gold=gold)
    for i in range(b.num_batches):
        batch = b.batch_at(1, i)
        rows = batch["rows"].view(-1, 2).tolist()
        want = [gold[pairs.index(tuple(r))] for r in rows]
        torch.testing.assert_close(batch["gold"], torch.tensor(want), equal_nan=True)
    plain = PairBatches(sentences, pairs, tokenizer, 4, 32, seed=3).batch_at(0, 0)
    assert torch.isnan(plain["gold"]).all()


def test_the_term_ranks_against_the_mixed_target(teacher_dir):
    from attnkd.models.load import load_encoder
    from attnkd.tasks.sentence_teachers import SentenceTargetDistiller

    rng = random.Random(4)
    sentences = sorted({make_sentence(rng) for _ in range(16)})
    t = load_encoder(str(teacher_dir))
    targets = encode(t.model, t.tokenizer, sentences, max_length=32)
    pairs = [(i, i + 1) for i in range(0, 16, 2)]
    gold = [0.1 * i if i != 2 else float("nan") for i in range(8)]
    b = PairBatches(sentences, pairs, t.tokenizer, 8, 32, 0, gold=gold)

    def module(xi: float, tgt: torch.Tensor) -> SentenceTargetDistiller:
        term = LossTermConfig("sentence_pair_rank", gt_weight=xi)
        return SentenceTargetDistiller(t.model.eval(), [TeacherEntry(name="x", losses=[term])],
                                       [tgt])  # fmt: skip

    shuffled = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        batch = b.batch_at(0, 0)
        s = pair_similarities(targets[batch["rows"]], batch["pairs"])
        for xi in (0.5, 1.0):
            want = similarity_rank_loss(s, mix_gold(s, batch["gold"], xi))
            got = module(xi, targets)(batch)["t0:sentence_pair_rank"]
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
        assert torch.isnan(b.batch_at(0, 0)["gold"]).any() or torch.isnan(
            b.batch_at(0, 1)["gold"]).any()  # fmt: skip
        full = PairBatches(sentences, pairs, t.tokenizer, 8, 32, 0, gold=[0.1 * i for i in
                                                                          range(8)]).batch_at(0, 0)
        only_gold = [module(1.0, tg)(full)["loss"] for tg in (targets, shuffled)]
        torch.testing.assert_close(only_gold[0], only_gold[1])  # labels alone: teacher unused
        tied = PairBatches(sentences, pairs, t.tokenizer, 8, 32, 0, gold=[0.5] * 8).batch_at(0, 0)
        mixed = [module(0.5, tg)(tied)["loss"] for tg in (targets, shuffled)]
        assert abs(float(mixed[0]) - float(mixed[1])) > 1e-4  # a mix still reads the teacher


def test_gold_mixing_is_refused_where_it_cannot_apply(gold_cfg):
    def check(cfg):
        validate(cfg, check_models=False, check_data=False)

    check(gold_cfg())
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.losses\[0\]\.gt_weight.*in \[0, 1\]"):
        check(gold_cfg("{name: sentence_pair_rank, gt_weight: 1.5}"))
    with pytest.raises(ConfigError, match=r"gt_weight.*no gold target"):
        check(gold_cfg("{name: sentence_similarity, gt_weight: 0.5}"))
    with pytest.raises(ConfigError, match=r"gt_weight.*stsb:train"):
        check(gold_cfg("{name: sentence_pair_rank, gt_weight: 0.5}",
                       "data.train_sources=[mrpc:train]"))  # fmt: skip
