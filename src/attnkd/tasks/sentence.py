"""Sentence embeddings: unlabeled sentences in, STS Spearman of mean-pooled embeddings out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from attnkd.config.schema import DistillConfig
from attnkd.data.benchmarks import read_stsb
from attnkd.data.collate import DynamicPaddingCollator, LengthGroupedBatches, TokenizedTexts
from attnkd.data.corpus import build_corpus, split_validation
from attnkd.errors import ConfigError
from attnkd.eval.sts import sts_eval
from attnkd.export import export_student
from attnkd.models.load import load_encoder
from attnkd.tasks.base import Task, TaskSetup

log = logging.getLogger("attnkd")


@dataclass
class EvalPairs:
    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def sentences(self) -> set[str]:
        return set(self.sentences1) | set(self.sentences2)


def eval_pairs(cfg: DistillConfig, task: str | None = None) -> EvalPairs:
    """An STS split: 'stsb:dev', or 'stsb:val' (a held-out part of STS-B train, by seed).

    ``task`` defaults to ``cfg.data.eval_task``.
    """
    task = task or cfg.data.eval_task
    if task == "stsb:dev":
        pairs = read_stsb("dev", cfg.data.data_dir)
    else:
        pairs = split_validation(
            read_stsb("train", cfg.data.data_dir), cfg.data.val_fraction, cfg.train.seed
        ).val
    return EvalPairs(
        task,
        [p.sentence1 for p in pairs],
        [p.sentence2 for p in pairs],
        [p.score for p in pairs],
    )


class GroupedBatches:
    """Length-grouped, collated batches addressable by (epoch, index) for exact resume."""

    def __init__(
        self, sentences: list[str], tokenizer, batch_size: int, max_length: int, seed: int
    ):
        if len(sentences) < batch_size:  # drop_last would leave no batch at all
            raise ConfigError(
                "train.batch_size",
                f"{batch_size} is more than the {len(sentences)} training sentences",
            )
        self.collate = DynamicPaddingCollator(tokenizer, max_length=max_length)
        self.tokens = TokenizedTexts(tokenizer, sentences, max_length)  # tokenised once
        self.sampler = LengthGroupedBatches(
            self.tokens.lengths, batch_size, seed=seed, drop_last=True
        )
        self._epoch, self._order = -1, []

    @property
    def num_batches(self) -> int:
        return len(self.sampler.lengths) // self.sampler.batch_size

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.sampler.batches(epoch)
        return self.collate.pad([self.tokens.ids(i) for i in self._order[index]])


def setup(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, tok) -> TaskSetup:
    evalset = eval_pairs(cfg, cfg.data.eval_task)
    selectset = eval_pairs(cfg, cfg.data.select_task)
    corpus = build_corpus(
        cfg.data.train_sources, cfg.data.data_dir, max_sentences=cfg.data.max_sentences,
        seed=cfg.train.seed, exclude=evalset.sentences() | selectset.sentences(),
        bad_rows=cfg.data.bad_rows,
    )  # fmt: skip
    log.info("corpus: %s", corpus.summary())
    batches = GroupedBatches(
        corpus.sentences, tok, cfg.train.batch_size, cfg.data.max_length, cfg.train.seed
    )

    def score(model: nn.Module, pairs: EvalPairs):
        return sts_eval(model, tok, pairs.sentences1, pairs.sentences2, pairs.scores,
                        max_length=cfg.data.max_length)  # fmt: skip

    def evaluate() -> dict[str, float]:
        r = score(student, selectset)
        return {"spearman": r.spearman, "pearson": r.pearson}

    def final() -> dict:
        s, t = score(student, evalset), score(teacher, evalset)
        return {
            "eval_split": evalset.name,
            "select_split": selectset.name,
            "eval_pairs": len(evalset.scores),
            "teacher": {"spearman": t.spearman},
            "student": {"spearman": s.spearman},
            "retention": s.spearman / t.spearman,
        }

    def export(folder: Path) -> Path:  # the teacher's sentence-transformers modules, if any
        teacher_dir = getattr(teacher.config, "name_or_path", None) or None
        return export_student(student, tok, folder, max_seq_length=cfg.data.max_length,
                              modules_from=teacher_dir)  # fmt: skip

    return TaskSetup(
        batches, evaluate, "spearman", "max", final, export,
        train_info={"corpus_sentences": len(corpus.sentences)},
    )  # fmt: skip


TASK = Task("sentence", load_encoder, setup)
