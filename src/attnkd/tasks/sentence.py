"""Sentence embeddings: unlabeled sentences in, STS Spearman of mean-pooled embeddings out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from attnkd.config.schema import DistillConfig
from attnkd.data.benchmarks import read_stsb
from attnkd.data.collate import DynamicPaddingCollator, LengthGroupedBatches, TokenizedTexts
from attnkd.data.corpus import Corpus, build_corpus, split_validation
from attnkd.data.overlap import sentence_key, sentence_keys, shared_keys
from attnkd.data.sources import held_out_sentences
from attnkd.errors import ConfigError, DataError
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
    dropped: int = 0
    """Pairs left out of a derived split (``stsb:val``) for sharing a sentence with stsb:dev."""

    def sentences(self) -> set[str]:
        return set(self.sentences1) | set(self.sentences2)


def _pairs(name: str, pairs) -> EvalPairs:
    return EvalPairs(
        name, [p.sentence1 for p in pairs], [p.sentence2 for p in pairs], [p.score for p in pairs]
    )


@dataclass
class SentenceSplits:
    """The final evaluation split and the checkpoint-selection split, sharing no sentence."""

    eval: EvalPairs
    select: EvalPairs
    select_dropped: int = 0
    """Selection pairs left out because a sentence of theirs is in ``stsb:dev``."""


def eval_pairs(cfg: DistillConfig, task: str | None = None) -> EvalPairs:
    """An STS split: 'stsb:dev', or 'stsb:val' (a held-out part of STS-B train, by seed).

    ``stsb:val`` is ``data.val_fraction`` of the STS-B train pairs (chosen by ``train.seed``)
    less every pair sharing a normalised sentence with STS-B dev (STS-B repeats short sentences
    across its files), so selection and evaluation never see the same sentence. ``task``
    defaults to ``cfg.data.eval_task``.
    """
    task = task or cfg.data.eval_task
    if task == "stsb:dev":
        return _pairs(task, read_stsb("dev", cfg.data.data_dir))
    val = split_validation(read_stsb("train", cfg.data.data_dir), cfg.data.val_fraction,
                           cfg.train.seed).val  # fmt: skip
    dev = sentence_keys(s for p in read_stsb("dev", cfg.data.data_dir)
                        for s in (p.sentence1, p.sentence2))  # fmt: skip
    kept = [p for p in val if not sentence_keys((p.sentence1, p.sentence2)) & dev]
    out = _pairs(task, kept)
    out.dropped = len(val) - len(kept)
    return out


def eval_splits(cfg: DistillConfig) -> SentenceSplits:
    """``data.eval_task`` and ``data.select_task``; a ConfigError naming ``data.select_task`` if
    they are the same split or share a sentence (after :func:`sentence_key` normalisation)."""
    d = cfg.data
    if d.select_task == d.eval_task:
        raise ConfigError(
            "data.select_task",
            f"'{d.select_task}' is also data.eval_task: the checkpoint would be picked on the "
            "split it is reported on; use 'stsb:val' (held out of STS-B train) to select",
        )
    evalset, selectset = eval_pairs(cfg, d.eval_task), eval_pairs(cfg, d.select_task)
    shared = shared_keys(evalset.sentences(), selectset.sentences())
    if shared:
        example = next(s for s in selectset.sentences() if sentence_key(s) in shared)
        raise ConfigError(
            "data.select_task",
            f"'{d.select_task}' shares {len(shared)} sentences with data.eval_task "
            f"'{d.eval_task}' (ignoring case, punctuation and spacing), e.g. {example!r}",
        )
    return SentenceSplits(evalset, selectset, selectset.dropped)


def held_out_files(cfg: DistillConfig) -> dict[str, list[str]]:
    """Sentences of each ``data.exclude_files`` item; a missing or unreadable file is a
    ConfigError naming the item and the path."""
    d, out = cfg.data, {}
    for i, spec in enumerate(d.exclude_files):
        try:
            out[spec] = list(held_out_sentences(spec, d.data_dir, bad_rows=d.bad_rows))
        except DataError as err:
            raise ConfigError(f"data.exclude_files[{i}]", str(err)) from err
    return out


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

    def rows_at(self, epoch: int, index: int) -> list[int]:
        """Indices (into the sentences) of batch ``index`` of ``epoch``."""
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.sampler.batches(epoch)
        return list(self._order[index])

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        return self.collate.pad([self.tokens.ids(i) for i in self.rows_at(epoch, index)])


def build_sentence_corpus(cfg: DistillConfig, splits: SentenceSplits) -> Corpus:
    """The training corpus exactly as the task builds it: ``data.train_sources`` less every
    sentence of the evaluation split, the selection split and each ``data.exclude_files``."""
    held_out = {splits.eval.name: splits.eval.sentences(),
                splits.select.name: splits.select.sentences(), **held_out_files(cfg)}  # fmt: skip
    d = cfg.data
    return build_corpus(
        d.train_sources, d.data_dir, max_sentences=d.max_sentences, seed=cfg.train.seed,
        exclude=held_out, bad_rows=d.bad_rows,
    )  # fmt: skip


def setup(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, tok) -> TaskSetup:
    if cfg.data.pair_batches:
        raise ConfigError("data.pair_batches", "pair batches run with a `teachers:` set of "
                          "sentence-level terms (cached targets), not a live teacher")  # fmt: skip
    splits = eval_splits(cfg)
    evalset, selectset = splits.eval, splits.select
    corpus = build_sentence_corpus(cfg, splits)
    log.info("corpus: %s", corpus.summary())
    if splits.select_dropped:
        log.info("selection split: %d pairs left out for sharing a sentence with %s",
                 splits.select_dropped, evalset.name)  # fmt: skip
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
            "select_pairs": len(selectset.scores),
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
        train_info={
            "corpus_sentences": len(corpus.sentences),
            "duplicates_removed": corpus.duplicates_removed,
            "held_out_removed": corpus.excluded,
            "held_out": {name: c.as_dict() for name, c in corpus.exclusions.items()},
            "select_pairs_dropped": splits.select_dropped,
        },
    )  # fmt: skip


def runs_teachers(cfg: DistillConfig) -> bool:
    """A teacher set of sentence-level terms only: run from cached embeddings."""
    from attnkd.tasks.sentence_teachers import cached_sentence_set

    return cached_sentence_set(cfg)


def run_teachers(cfg: DistillConfig, run_dir: Path, device, resume: bool, progress: bool) -> dict:
    """See :func:`attnkd.tasks.sentence_teachers.run_teachers`."""
    from attnkd.tasks.sentence_teachers import run_teachers as run

    return run(cfg, run_dir, device, resume, progress)


TASK = Task("sentence", load_encoder, setup, runs_teachers=runs_teachers,
            run_teachers=run_teachers)  # fmt: skip
