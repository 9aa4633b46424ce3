"""Sequence classification (SST-2, MRPC, RTE): labelled sentences or pairs in, accuracy/F1 out.

Models are Hugging Face ``AutoModelForSequenceClassification`` encoders (BERT, MPNet): a
pretrained encoder gets a fresh classification head, a folder an earlier run exported keeps
its own. Students cut from the teacher (``student.init: teacher``) keep the teacher's head.

Splits (:mod:`attnkd.data.cls_splits`): ``data.eval_task`` is the never-trained-on split the
results report (``mrpc:dev``, ``rte:dev``, ``sst2:heldout``), ``data.select_task`` picks the
best checkpoint (``DATASET:val``, from train); training rows overlapping either are removed.
``data.max_sentences`` caps the labelled training rows (seeded), ``data.unlabeled_sources``
adds unlabeled text (label -100: only the teacher's soft labels teach it, SSLD).
``data.mixture: ddk`` samples those domains by their teacher-student loss gap
(:mod:`attnkd.tasks.sequence_classification_ddk`); ``data.mask_ratio`` masks tokens of the
student's input (DMAE, :mod:`attnkd.data.token_mask`).

Loss terms (the step: :mod:`attnkd.tasks.sequence_classification_step`): the class-logit
terms of :mod:`attnkd.losses.terms.classification` (``cls_ce``, ``cls_kd``, ``cls_ofa``) get the
models' logits and the labels; ``cls_ofa_exit`` and ``dmae`` (:mod:`attnkd.losses.terms.cls_taps`)
get both and the taps; every other term (``hidden_mse``, ``relation``, ...) gets captured taps
and the attention mask, as in the other text tasks. The teacher runs only when a term needs it
(and only up to the deepest tapped layer when none reads its logits); when none does (a
baseline trained from labels alone), the results hold no teacher score. ``teacher.recipe``
runs the teacher stage first when ``teacher.name`` (the folder it exports) does not exist yet.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkd.config.schema import DistillConfig
from attnkd.data.cls_splits import ClsExample, ClsSplits, build_splits
from attnkd.data.collate import DynamicPaddingCollator, LengthGroupedBatches
from attnkd.data.corpus import build_corpus
from attnkd.data.token_mask import TokenMasker
from attnkd.errors import AttnkdError, ConfigError
from attnkd.eval.classification import ClsScores, predict, score
from attnkd.export import export_student
from attnkd.losses.logits import IGNORE_INDEX
from attnkd.models.load import LoadedModel, load_pretrained
from attnkd.tasks.base import Task, TaskSetup
from attnkd.tasks.image_classification import prepare as run_teacher_stage
from attnkd.tasks.sequence_classification_step import (
    config_uses_teacher,
    make_step,
    uses_teacher,  # noqa: F401 (re-exported: the task's public step helpers)
)

log = logging.getLogger("attnkd")


def load(name: str, attn_implementation: str = "sdpa", tokenizer: bool = True) -> LoadedModel:
    """An encoder with a sequence-classification head (fresh if the folder has none).

    Safetensors weights only; the head's size is set for the task in :func:`setup`.
    """
    return load_pretrained(name, "sequence_classification", attn_implementation, tokenizer)


def prepare(cfg: DistillConfig, run_recipe) -> None:
    """The teacher stage: ``teacher.recipe`` runs first when ``teacher.name`` is missing."""
    run_teacher_stage(cfg, run_recipe)


@functools.lru_cache(maxsize=4)
def _cached_splits(eval_task, select_task, data_dir, val_fraction, seed, bad_rows) -> ClsSplits:
    return build_splits(eval_task, select_task, data_dir, val_fraction, seed, bad_rows)


def task_splits(cfg: DistillConfig) -> ClsSplits:
    """The run's training, selection and evaluation splits (built once per process)."""
    d = cfg.data
    return _cached_splits(
        d.eval_task, d.select_task, d.data_dir, d.val_fraction, cfg.train.seed, d.bad_rows
    )


def validate_data(cfg: DistillConfig) -> None:
    """The splits build (files read, names consistent), leave a batch to train on, and every
    ``data.unlabeled_sources`` item reads (ConfigError naming the key)."""
    from attnkd.data.sources import load_source
    from attnkd.errors import DataError

    try:
        splits = task_splits(cfg)
    except DataError as err:
        raise ConfigError("data.eval_task", str(err)) from err
    n = (
        len(splits.train)
        if cfg.data.max_sentences is None
        else min(len(splits.train), cfg.data.max_sentences)
    )
    if n < cfg.train.batch_size:
        raise ConfigError(
            "train.batch_size",
            f"{cfg.train.batch_size} is more than the {n} training rows of {splits.dataset}",
        )
    if cfg.data.unlabeled_sources and splits.train[0].text_pair is not None:
        raise ConfigError(
            "data.unlabeled_sources",
            f"{splits.dataset} classifies sentence "
            "pairs; unlabeled text is single sentences (use it with sst2)",
        )
    for i, spec in enumerate(cfg.data.unlabeled_sources):
        try:
            load_source(spec, cfg.data.data_dir, bad_rows=cfg.data.bad_rows)
        except DataError as err:
            raise ConfigError(f"data.unlabeled_sources[{i}]", str(err)) from err


def set_labels(model: nn.Module, names: tuple[str, ...]) -> None:
    """Give ``model`` a head of ``len(names)`` classes named ``names`` (``id2label``).

    A head of another size is replaced by a freshly initialised one (said in the log).
    """
    head = getattr(model, "classifier", None)
    out = getattr(head, "out_proj", head)  # MPNet/RoBERTa: a small MLP ending in out_proj
    if not isinstance(out, nn.Linear):
        raise AttnkdError(f"{type(model).__name__}: no linear classification head found")
    if out.out_features != len(names):
        log.info("classification head: %d -> %d classes (fresh)", out.out_features, len(names))
        new = nn.Linear(out.in_features, len(names)).to(out.weight.device, out.weight.dtype)
        if head is out:
            model.classifier = new
        else:
            head.out_proj = new
    model.config.num_labels = len(names)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}


class Encoded:
    """Examples tokenised once (``input_ids``, ``token_type_ids``, ``label``) and a padder."""

    def __init__(self, tokenizer, examples: list[ClsExample], max_length: int):
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples]
        if any(p is not None for p in pairs):
            if any(p is None for p in pairs):
                raise AttnkdError("a batch mixes sentence pairs and single sentences")
            enc = tokenizer(texts, pairs, truncation="longest_first", max_length=max_length)
        else:
            enc = tokenizer(texts, truncation=True, max_length=max_length)
        types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
        self.rows = [
            {"input_ids": ids, "token_type_ids": tt, "label": e.label}
            for ids, tt, e in zip(enc["input_ids"], types, examples, strict=True)
        ]
        self.collator = DynamicPaddingCollator(tokenizer, max_length, token_type_ids=True)

    def pad(self, rows: list[dict]) -> dict[str, Tensor]:
        batch = self.collator.pad(
            [r["input_ids"] for r in rows], [r["token_type_ids"] for r in rows]
        )
        batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        return batch

    @property
    def labels(self) -> list[int]:
        return [r["label"] for r in self.rows]


class ClsBatches:
    """Length-grouped training batches addressable by (epoch, index), for exact resume."""

    def __init__(self, encoded: Encoded, batch_size: int, seed: int, finish=None):
        if len(encoded.rows) < batch_size:
            raise ConfigError(
                "train.batch_size",
                f"{batch_size} is more than the {len(encoded.rows)} training rows",
            )
        self.encoded = encoded
        lengths = [len(r["input_ids"]) for r in encoded.rows]
        self.sampler = LengthGroupedBatches(lengths, batch_size, seed=seed, drop_last=True)
        self._epoch, self._order = -1, []
        self.finish = finish
        """``finish(batch, m)`` adds to micro-batch ``m`` (the masked student input)."""

    @property
    def num_batches(self) -> int:
        return len(self.sampler)

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.sampler.batches(epoch)
        batch = self.encoded.pad([self.encoded.rows[i] for i in self._order[index]])
        m = epoch * self.num_batches + index
        return batch if self.finish is None else self.finish(batch, m)


def unlabeled_examples(cfg: DistillConfig, splits: ClsSplits, pairs: bool) -> list[ClsExample]:
    """``data.unlabeled_sources`` sentences (label -100), less every held-out sentence."""
    d = cfg.data
    if not d.unlabeled_sources:
        return []
    if pairs:
        raise ConfigError(
            "data.unlabeled_sources",
            f"{splits.dataset} classifies sentence pairs; unlabeled text is "
            "single sentences (use it with sst2)",
        )
    held = {
        name: [s for e in rows for s in e.sentences()]
        for name, rows in ((splits.eval_name, splits.eval), (splits.select_name, splits.select))
    }
    corpus = build_corpus(
        d.unlabeled_sources,
        d.data_dir,
        max_sentences=d.max_unlabeled,
        seed=cfg.train.seed,
        exclude=held,
        bad_rows=d.bad_rows,
    )
    log.info("unlabeled: %s", corpus.summary())
    return [ClsExample(s, IGNORE_INDEX) for s in corpus.sentences]


def _subsample(rows: list[ClsExample], n: int | None, seed: int) -> list[ClsExample]:
    if n is None or n >= len(rows):
        return rows
    import numpy as np

    keep = sorted(int(i) for i in np.random.default_rng(seed).permutation(len(rows))[:n])
    return [rows[i] for i in keep]


def setup(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, tok) -> TaskSetup:
    d = cfg.data
    splits = task_splits(cfg)
    set_labels(student, splits.label_names)
    pairs = splits.train[0].text_pair is not None
    train_rows = _subsample(splits.train, d.max_sentences, cfg.train.seed)
    select, evalset = (
        Encoded(tok, splits.select, d.max_length),
        Encoded(tok, splits.eval, d.max_length),
    )
    masker = TokenMasker(tok, d.mask_ratio, cfg.train.seed) if d.mask_ratio else None
    state, mixture_info = None, {}
    if d.mixture == "ddk":
        from attnkd.tasks.sequence_classification_ddk import build_mixture

        def collate(rows: list[dict], m: int) -> dict[str, Tensor]:
            batch = select.pad(rows)  # any Encoded pads: one tokenizer, one collator
            return batch if masker is None else masker(batch, m)

        mix = build_mixture(cfg, splits, train_rows, lambda rows: Encoded(tok, rows, d.max_length),
                            collate, teacher, student)  # fmt: skip
        batches, state, unlabeled = mix.batches, mix.state, sum(mix.train_rows[1:])
        mixture_info = {"domains": mix.names, "train_rows": mix.train_rows}
    else:
        extra = unlabeled_examples(cfg, splits, pairs)
        train = Encoded(tok, train_rows + extra, d.max_length)
        batches = ClsBatches(train, cfg.train.batch_size, cfg.train.seed, masker)
        unlabeled = len(extra)
    has_teacher = config_uses_teacher(cfg)

    def scores(model: nn.Module, enc: Encoded) -> ClsScores:
        return score(predict(model, enc.rows, enc.pad), enc.labels)

    def evaluate() -> dict[str, float]:
        return scores(student, select).as_dict()

    def final() -> dict:
        s = scores(student, evalset)
        t = scores(teacher, evalset) if has_teacher else None
        return {
            "eval_split": splits.eval_name,
            "select_split": splits.select_name,
            "labels": list(splits.label_names),
            "teacher": {} if t is None else t.as_dict(),
            "student": {**s.as_dict(), "select": scores(student, select).as_dict()},
            "retention": None if t is None else s.accuracy / t.accuracy,
            "retention_f1": None if t is None or not t.f1 else s.f1 / t.f1,
            **({} if state is None else {"mixture": {**mixture_info, **state.record()}}),
        }

    def export(folder: Path) -> Path:
        return export_student(student, tok, folder, sentence_transformers=False)

    info = {
        **splits.info(),
        "train_rows_used": len(train_rows),
        "unlabeled_rows": unlabeled,
        "teacher_used": has_teacher,
        "mask_ratio": d.mask_ratio,
        **({"mixture": mixture_info} if mixture_info else {}),
    }
    return TaskSetup(batches, evaluate, "accuracy", "max", final, export, train_info=info,
                     state=state)  # fmt: skip


TASK = Task("sequence_classification", load, setup, make_step=make_step, prepare=prepare)
