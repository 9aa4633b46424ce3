"""Sentence task with a teacher set whose terms are all sentence-level (``teachers:``, e.g.
all-mpnet-base-v2 with its own tokenizer teaching a BERT student): cached targets.

Each teacher encodes the training sentences with its own tokenizer into mean-pooled embeddings,
once per corpus (:mod:`attnkd.data.embedding_cache`); training then runs the student alone,
reading its own tokenizer. Terms: ``sentence_similarity`` (the batch's cosine-similarity matrix;
no projector), per teacher or, at the top level, against the ensemble (the teachers' matrices
averaged with their normalised weights), and ``sentence_mse`` / ``sentence_cosine`` per teacher
(through a learned projector to the teacher's width). A set with any per-token term goes to the
general runner, whose compatibility rule refuses it for a teacher with another tokenizer
(:mod:`attnkd.teachers.compat`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkd.config.schema import DistillConfig, LossTermConfig, TeacherEntry
from attnkd.data.embedding_cache import CacheKey, EmbeddingCache, model_fingerprint
from attnkd.engine.checkpoint import load_checkpoint
from attnkd.engine.loop import StepOutput, fit
from attnkd.errors import AttnkdError, ConfigError
from attnkd.eval.encode import encode
from attnkd.eval.sts import StsResult, sts_eval, sts_from_embeddings
from attnkd.export import export_student
from attnkd.losses import features as feat
from attnkd.losses import sentence as sim
from attnkd.models.load import (
    count_parameters,
    freeze_input_embeddings,
    freeze_parts,
    load_config,
)
from attnkd.paths import cache_dir
from attnkd.tasks.sentence import EvalPairs, GroupedBatches, build_sentence_corpus, eval_splits
from attnkd.tasks.sentence_pairs import PairBatches, corpus_pairs, mine_pairs

log = logging.getLogger("attnkd")

SENTENCE_TERMS = ("sentence_similarity", "sentence_pair_rank", "sentence_mse", "sentence_cosine")
"""Terms a teacher with its own tokenizer may use (whole-sentence targets)."""
MATRIX_TERMS = ("sentence_similarity", "sentence_pair_rank")
"""Terms read from the batch's similarity matrix: no projector, ensemble-able (top level)."""


# ---------------------------------------------------------------- validation


def cached_sentence_set(cfg: DistillConfig) -> bool:
    """True for a sentence-task teacher set whose every term (each teacher's and the ensemble's
    top-level ``losses``) is sentence-level: it runs from cached embeddings, each teacher
    tokenising for itself. Other sets go to the general teacher-set runner."""
    from attnkd.config.schema import StrategyConfig

    terms = [t.name for e in cfg.teachers for t in e.losses] + [t.name for t in cfg.losses]
    plain = cfg.task == "sentence" and cfg.strategy == StrategyConfig()
    return plain and bool(cfg.teachers) and bool(terms) and all(n in SENTENCE_TERMS for n in terms)


def check_teachers_static(cfg: DistillConfig) -> None:
    """Before any model loads: one of ``teacher``/``teachers``, names, weights, labels,
    final-layer targets, and ensemble (top-level) terms that can average across widths."""
    from attnkd.config.schema import TeacherConfig

    if cfg.teacher != TeacherConfig():
        raise ConfigError("teacher", "give a single `teacher:` or a `teachers:` list, not both")
    labels = [t.label or f"t{i}" for i, t in enumerate(cfg.teachers)]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ConfigError(f"teachers[{i}].label", f"label '{label}' is used twice")
    for i, t in enumerate(cfg.teachers):
        if not t.name:
            raise ConfigError(f"teachers[{i}].name", "name the teacher (model or folder)")
        if t.weight < 0:
            raise ConfigError(f"teachers[{i}].weight", f"must be >= 0, got {t.weight}")
        if t.random_init:
            raise ConfigError(f"teachers[{i}].random_init", "cached sentence targets come "
                              "from the trained teacher; random_init is for live sets")  # fmt: skip
    if sum(t.weight for t in cfg.teachers) <= 0:
        raise ConfigError("teachers", "the teachers' weights are all 0")
    keyed = [(f"teachers[{i}].losses[{j}]", term) for i, t in enumerate(cfg.teachers)
             for j, term in enumerate(t.losses)]  # fmt: skip
    keyed += [(f"losses[{j}]", term) for j, term in enumerate(cfg.losses)]
    for key, term in keyed:
        if term.teacher_layer != -1 or term.student_layer != -1:
            raise ConfigError(f"{key}.teacher_layer", "cached targets are the teachers' final "
                              "mean-pooled embeddings: leave the layers at -1")  # fmt: skip
        if term.weight < 0:
            raise ConfigError(f"{key}.weight", f"must be >= 0, got {term.weight}")
        if key.startswith("losses") and term.name not in MATRIX_TERMS:
            raise ConfigError(f"{key}.name", f"'{term.name}' compares embeddings of one width; "
                              "as an ensemble term use sentence_similarity or "
                              "sentence_pair_rank, or give it to one teacher "
                              "(teachers[i].losses)")  # fmt: skip
        if term.name == "sentence_pair_rank" and not cfg.data.pair_batches:
            raise ConfigError(f"{key}.name", "sentence_pair_rank ranks the training pairs of "
                              "each batch: set data.pair_batches: true")  # fmt: skip
        if term.gt_weight and term.name != "sentence_pair_rank":
            raise ConfigError(f"{key}.gt_weight", f"'{term.name}' has no gold target to mix: "
                              "gt_weight mixes STS-B gold scores into sentence_pair_rank "
                              "only")  # fmt: skip
        if not 0.0 <= term.gt_weight <= 1.0:
            raise ConfigError(f"{key}.gt_weight", f"must be in [0, 1], got {term.gt_weight}")
        if term.gt_weight and not any(s.startswith("stsb:") for s in cfg.data.train_sources):
            raise ConfigError(f"{key}.gt_weight", "gold similarity scores come from STS-B "
                              "training pairs: add stsb:train to data.train_sources")  # fmt: skip
    if cfg.data.mined_pairs and not cfg.data.pair_batches:
        raise ConfigError("data.mined_pairs", "mined pairs go into pair batches: set "
                          "data.pair_batches: true")  # fmt: skip
    if cfg.data.mined_pairs < 0:
        raise ConfigError("data.mined_pairs", f"must be >= 0, got {cfg.data.mined_pairs}")
    if cfg.data.pair_batches and cfg.train.batch_size % 2:
        raise ConfigError("train.batch_size", "data.pair_batches puts both sentences of a pair "
                          f"in a batch: use an even size, got {cfg.train.batch_size}")  # fmt: skip


def check_teachers_models(cfg: DistillConfig, student_width: int) -> list[int]:
    """Each teacher's config loads and is an encoder; widths need a projector for the
    embedding terms. Returns the teachers' widths."""
    from attnkd.models.adapters import adapter_for

    widths = []
    for i, t in enumerate(cfg.teachers):
        try:
            tcfg = load_config(t.name)
            family = adapter_for(tcfg.model_type)
        except (AttnkdError, ValueError) as err:
            raise ConfigError(f"teachers[{i}].name", str(err)) from err
        if family.causal:
            raise ConfigError(f"teachers[{i}].name", f"'{t.name}' is a decoder; sentence "
                              "teachers must be encoders")  # fmt: skip
        width = int(tcfg.hidden_size)
        for j, term in enumerate(t.losses):
            if term.name not in MATRIX_TERMS and width != student_width and not term.projector:
                raise ConfigError(
                    f"teachers[{i}].losses[{j}].projector",
                    f"teacher '{t.name}' is {width} wide, the student {student_width}: "
                    "set projector: true",
                )
        widths.append(width)
    return widths


# ---------------------------------------------------------------- cached targets


@dataclass
class TeacherTargets:
    """One teacher's mean-pooled embeddings of a list of sentences, from its cache."""

    name: str
    embeddings: Tensor
    """(n, width) float32, row i for sentence i."""
    cache_file: str
    encoded: int
    """Sentences encoded this time (0: all read from the cache)."""
    seconds: float


def teacher_cache(name: str, max_length: int, root: Path | None = None) -> EmbeddingCache:
    """The embedding cache of teacher ``name`` (a local or packaged folder) at ``max_length``."""
    from attnkd.models.hub import resolve_model_path

    resolved = resolve_model_path(name)
    folder = resolved.path
    if resolved.source == "hub":  # users with a network: the hub's local snapshot folder
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(resolved.path)
        except Exception as err:  # offline, unknown id, no access: all say the same to the user
            raise AttnkdError(f"cannot fetch teacher '{name}' to fingerprint its cached "
                              f"embeddings: {err}") from None  # fmt: skip
    key = CacheKey(resolved.name, model_fingerprint(folder), max_length)
    return EmbeddingCache(root or cache_dir() / "embeddings", key)


def teacher_targets(
    name: str, sentences: list[str], max_length: int, batch_size: int = 64
) -> TeacherTargets:
    """Embeddings of ``sentences`` by teacher ``name``; only sentences missing from its cache
    are encoded (the model loads only then)."""
    from attnkd.models.load import freeze, load_encoder

    cache, loaded = teacher_cache(name, max_length), []
    t0 = time.time()

    def encode_fn(texts: list[str]) -> Tensor:
        if not loaded:
            loaded.append(load_encoder(name))
            freeze(loaded[0].model)
        m = loaded[0]
        return encode(m.model, m.tokenizer, texts, batch_size=batch_size, max_length=max_length)

    emb, encoded = cache.get(sentences, encode_fn)
    return TeacherTargets(name, emb, str(cache.path), encoded, time.time() - t0)


# ---------------------------------------------------------------- what the optimizer trains


class SentenceTargetDistiller(nn.Module):
    """The student and the projectors of its embedding terms. ``forward(batch)`` runs the
    student, mean-pools, and scores every term against the batch's cached target rows: each
    teacher's own terms (``teachers[i].losses``) and the ensemble terms (top-level ``losses``:
    ``sentence_similarity`` against the mean of the teachers' similarity matrices, weighted by
    their normalised ``weight``)."""

    def __init__(
        self,
        student: nn.Module,
        entries: list[TeacherEntry],
        targets: list[Tensor],
        ensemble: list[LossTermConfig] = (),
    ):
        super().__init__()
        self.student = student
        self.projectors = nn.ModuleDict()
        self.targets = targets  # plain tensors: not trained, not checkpointed
        total = sum(float(e.weight) for e in entries)
        self.mix = [float(e.weight) / total for e in entries]
        labels = [e.label or f"t{i}" for i, e in enumerate(entries)]
        # (label, teachers read, term, projector key): teachers None = the ensemble
        self.terms: list[tuple[str, int | None, LossTermConfig, str]] = []
        width = student.config.hidden_size
        for i, (entry, t) in enumerate(zip(entries, targets)):
            for j, term in enumerate(entry.losses):
                key = f"{i}_{j}" if term.projector and term.name not in MATRIX_TERMS else ""
                if key:
                    self.projectors[key] = feat.Projector(width, t.shape[1])
                self.terms.append((f"{labels[i]}:{term.name}", i, term, key))
        for term in ensemble:
            self.terms.append((f"ensemble:{term.name}", None, term, ""))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"loss": weighted total, "<label>": each term}``; ``batch["rows"]`` (batch,) indexes
        the cached targets; ``batch["pairs"]`` (pairs, 2) the batch rows of its training pairs
        (pair batches, for ``sentence_pair_rank``)."""
        rows = batch["rows"].cpu()
        mask = batch["attention_mask"]
        hidden = self.student(input_ids=batch["input_ids"], attention_mask=mask)[0]
        emb = feat.mean_pool(hidden.float(), mask.bool())
        out: dict[str, Tensor] = {}
        total = emb.sum() * 0.0
        for label, i, term, key in self.terms:
            if term.name in MATRIX_TERMS:
                who = range(len(self.targets)) if i is None else [i]
                target = sim.ensemble_similarity(
                    [self.targets[k][rows].to(emb.device) for k in who],
                    [self.mix[k] for k in who],
                )
                if term.name == "sentence_similarity":
                    v = sim.similarity_matrix_mse(emb, target)
                else:
                    pairs = batch["pairs"].to(emb.device)
                    t_pairs = target[pairs[:, 0], pairs[:, 1]]
                    if term.gt_weight:
                        t_pairs = sim.mix_gold(t_pairs, batch["gold"], float(term.gt_weight))
                    v = sim.similarity_rank_loss(sim.pair_similarities(emb, pairs), t_pairs)
            else:
                t = self.targets[i][rows].to(emb.device)
                s = self.projectors[key](emb) if key else emb
                fn = feat.sentence_embedding_mse if term.name == "sentence_mse" else (
                    feat.sentence_embedding_cosine)  # fmt: skip
                v = fn(s, t)
            out[label] = v
            total = total + float(term.weight) * v
        return {"loss": total, **out}


class _RowBatches:
    """The task's length-grouped token batches, each with the corpus ``rows`` it holds."""

    def __init__(self, grouped: GroupedBatches):
        self.grouped = grouped

    @property
    def num_batches(self) -> int:
        return self.grouped.num_batches

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        batch = self.grouped.batch_at(epoch, index)
        batch["rows"] = torch.tensor(self.grouped.rows_at(epoch, index), dtype=torch.long)
        return batch


# ---------------------------------------------------------------- the run


def _teacher_score(name: str, pairs: EvalPairs, max_length: int) -> tuple[StsResult, int]:
    uniq = sorted(pairs.sentences())
    t = teacher_targets(name, uniq, max_length)
    return sts_from_embeddings(dict(zip(uniq, t.embeddings)), pairs.sentences1, pairs.sentences2,
                               pairs.scores), t.encoded  # fmt: skip


def build_student(cfg: DistillConfig) -> tuple[nn.Module, object]:
    """The student and the tokenizer it reads: ``student.init`` with its own tokenizer, or a
    cut of the first teacher (``init: teacher``) with that teacher's."""
    from attnkd.models.load import load_encoder
    from attnkd.students.build import build_student as cut
    from attnkd.students.build import select_layers

    s = cfg.student
    if s.init != "teacher":
        m = load_encoder(s.init, s.attn_implementation)
        return m.model.train(), m.tokenizer
    first = load_encoder(cfg.teachers[0].name, cfg.teachers[0].attn_implementation)
    layers = select_layers(first.model.config.num_hidden_layers, s.layers, s.layer_rule)
    student = cut(first.model, layers, s.hidden_size, s.num_heads, s.intermediate_size,
                  s.attn_implementation)[0]  # fmt: skip
    return student.train(), first.tokenizer


def run_teachers(
    cfg: DistillConfig,
    run_dir: Path,
    device: torch.device,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Build the student, train it on the cached targets of ``cfg.teachers`` (each teacher's
    terms and the ensemble's), evaluate, export to ``run_dir/student``; return the results."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise AttnkdError("teachers: runs in one process (the targets are cached; torchrun "
                          "adds nothing here)")  # fmt: skip
    check_teachers_static(cfg)
    d = cfg.data
    splits = eval_splits(cfg)
    corpus = build_sentence_corpus(cfg, splits)
    log.info("corpus: %s", corpus.summary())
    targets = [teacher_targets(t.name, corpus.sentences, d.max_length) for t in cfg.teachers]
    student, tok = build_student(cfg)
    if cfg.train.freeze_embeddings:
        freeze_input_embeddings(student)
    if cfg.student.freeze:
        freeze_parts(student, cfg.student.freeze)
    module = SentenceTargetDistiller(student, cfg.teachers, [t.embeddings for t in targets],
                                     cfg.losses)  # fmt: skip
    module.to(device)
    mined = []
    if d.pair_batches and d.mined_pairs:
        mined = mine_pairs([t.embeddings for t in targets], [e.weight for e in cfg.teachers],
                           d.mined_pairs)  # fmt: skip
    pairs = corpus_pairs(cfg, corpus, mined) if d.pair_batches else None
    if pairs is not None:
        log.info("pair batches: %s", pairs.as_dict())
        batches = PairBatches(corpus.sentences, pairs.pairs, tok, cfg.train.batch_size,
                              d.max_length, cfg.train.seed, gold=pairs.gold)  # fmt: skip
    else:
        batches = _RowBatches(GroupedBatches(corpus.sentences, tok, cfg.train.batch_size,
                                             d.max_length, cfg.train.seed))  # fmt: skip

    def step(batch: dict[str, Tensor]) -> StepOutput:
        out = module(batch)
        total = out.pop("loss")
        return StepOutput(total, {k: float(v.detach()) for k, v in out.items()},
                          int(batch["input_ids"].shape[0]))  # fmt: skip

    def score(pairs: EvalPairs) -> StsResult:
        return sts_eval(student, tok, pairs.sentences1, pairs.sentences2, pairs.scores,
                        max_length=d.max_length)  # fmt: skip

    def evaluate() -> dict[str, float]:
        r = score(splits.select)
        return {"spearman": r.spearman, "pearson": r.pearson}

    t0 = time.time()
    best_step = best_metric = None
    steps = 0
    if cfg.train.max_steps > 0:
        result = fit(cfg.train, module, step, batches, run_dir, evaluate=evaluate,
                     select_metric="spearman", resume=resume, progress=progress)  # fmt: skip
        best_step, best_metric, steps = result.best_step, result.best_metric, result.steps_done
        if best_step is not None:
            load_checkpoint(run_dir / "checkpoints" / "best", module)
    train_s = time.time() - t0
    s_eval = score(splits.eval)
    teachers = []
    for entry, tt in zip(cfg.teachers, targets):
        r, _ = _teacher_score(entry.name, splits.eval, d.max_length)
        teachers.append({"label": entry.label or f"t{len(teachers)}", "name": entry.name,
                         "weight": entry.weight, "spearman": r.spearman,
                         "cache": tt.cache_file, "encoded_this_run": tt.encoded,
                         "target_seconds": tt.seconds})  # fmt: skip
    base = cfg.student.init if cfg.student.init != "teacher" else cfg.teachers[0].name
    export_student(student, tok, run_dir / "student", max_seq_length=d.max_length,
                   modules_from=_folder(base))  # fmt: skip
    return {
        "name": cfg.name,
        "task": cfg.task,
        "seed": cfg.train.seed,
        "eval_split": splits.eval.name,
        "select_split": splits.select.name,
        "eval_pairs": len(splits.eval.scores),
        "select_pairs": len(splits.select.scores),
        "teachers": teachers,
        "teacher": {"name": cfg.teachers[0].name, "spearman": teachers[0]["spearman"]},
        "student": {
            "spearman": s_eval.spearman,
            "params": count_parameters(student),
            "layers": student.config.num_hidden_layers,
            "best_step": best_step,
            "select_spearman": best_metric,
        },  # fmt: skip
        "retention": s_eval.spearman / teachers[0]["spearman"],
        "train": {
            "steps": steps,
            "seconds_this_session": train_s,
            "corpus_sentences": len(corpus.sentences),
            "held_out_removed": corpus.excluded,
            "held_out": {name: c.as_dict() for name, c in corpus.exclusions.items()},
            "sources": {name: asdict(c) for name, c in corpus.counts.items()},
            "pairs": pairs.as_dict() if pairs is not None else None,
            "select_pairs_dropped": splits.select_dropped,
        },  # fmt: skip
    }


def _folder(name: str) -> str | None:
    """The local folder of model ``name`` (its sentence-transformers modules), or None."""
    from attnkd.models.hub import resolve_model_path

    resolved = resolve_model_path(name)
    return None if resolved.source == "hub" else resolved.path
