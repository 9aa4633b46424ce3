"""Sentence task with teachers that tokenise for themselves (``teachers:``, e.g. all-mpnet-base-v2
teaching a BERT student): sentence-level targets only, computed once and cached.

Each teacher encodes the training sentences with its own tokenizer into mean-pooled embeddings,
once per corpus (:mod:`attnkd.data.embedding_cache`); training then runs the student alone. The
terms allowed are those that compare whole sentences, so no token alignment or shared vocabulary
is needed: ``sentence_similarity`` (the batch's cosine-similarity matrix; every teacher listing
it contributes to one ensemble target, the weighted mean of their matrices), ``sentence_mse``
and ``sentence_cosine`` (student embedding through a learned projector to the teacher's width).
Per-token terms (attention, relations, hidden states, logits) are refused, naming the teacher.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
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
from attnkd.models.load import count_parameters, freeze_input_embeddings, load_config
from attnkd.paths import cache_dir
from attnkd.tasks.sentence import EvalPairs, GroupedBatches, build_sentence_corpus, eval_splits

log = logging.getLogger("attnkd")

SENTENCE_TERMS = ("sentence_similarity", "sentence_mse", "sentence_cosine")
"""Terms a teacher with its own tokenizer may use (whole-sentence targets)."""


# ---------------------------------------------------------------- validation


def check_teachers_static(cfg: DistillConfig) -> None:
    """``teachers:`` entries before any model loads: sentence task, known sentence-level terms,
    final-layer targets, weights >= 0, and no top-level ``losses`` beside them."""
    from attnkd.losses.terms import TERMS

    if not cfg.teachers:
        return
    if cfg.task != "sentence":
        raise ConfigError("teachers", f"several teachers are supported for task 'sentence', "
                          f"not '{cfg.task}'")  # fmt: skip
    if cfg.losses:
        raise ConfigError("losses", "with teachers:, each term goes under its teacher "
                          "(teachers[i].losses); set losses: []")  # fmt: skip
    for i, t in enumerate(cfg.teachers):
        key = f"teachers[{i}]"
        if not t.name:
            raise ConfigError(f"{key}.name", "give the teacher's hub id, folder or packaged name")
        if t.weight < 0:
            raise ConfigError(f"{key}.weight", f"must be >= 0, got {t.weight}")
        if not t.losses:
            raise ConfigError(f"{key}.losses", f"teacher '{t.name}' has no loss terms")
        for j, term in enumerate(t.losses):
            k = f"{key}.losses[{j}]"
            if term.name not in TERMS:
                raise ConfigError(f"{k}.name", f"unknown loss '{term.name}'; known: "
                                  f"{', '.join(TERMS)}")  # fmt: skip
            if term.name not in SENTENCE_TERMS:
                raise ConfigError(
                    f"{k}.name",
                    f"teacher '{t.name}' tokenises for itself, so term '{term.name}' (compared "
                    "token by token: attention, relations, per-token hidden states or logits) "
                    f"cannot be used; sentence-level terms: {', '.join(SENTENCE_TERMS)}",
                )
            if term.teacher_layer != -1 or term.student_layer != -1:
                raise ConfigError(f"{k}.teacher_layer", "teachers' targets are their final "
                                  "mean-pooled embeddings: leave the layers at -1")  # fmt: skip
            if term.weight < 0:
                raise ConfigError(f"{k}.weight", f"must be >= 0, got {term.weight}")


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
            if term.name != "sentence_similarity" and width != student_width and not term.projector:
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
    student, mean-pools, and scores every term against the batch's cached target rows."""

    def __init__(self, student: nn.Module, entries: list[TeacherEntry], targets: list[Tensor]):
        super().__init__()
        self.student = student
        self.projectors = nn.ModuleDict()
        self.targets = targets  # plain tensors: not trained, not checkpointed
        self.sim_weights: list[tuple[int, float]] = []
        self.embed_terms: list[tuple[str, int, LossTermConfig, float, str]] = []
        width = student.config.hidden_size
        for i, (entry, t) in enumerate(zip(entries, targets)):
            for j, term in enumerate(entry.losses):
                w = float(entry.weight) * float(term.weight)
                if term.name == "sentence_similarity":
                    self.sim_weights.append((i, w))
                    continue
                key = f"{i}_{j}" if term.projector else ""  # "": widths equal, no projector
                if key:
                    self.projectors[key] = feat.Projector(width, t.shape[1])
                self.embed_terms.append((f"{term.name}@teacher{i}", i, term, w, key))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"loss": weighted total, "<label>": each term}``; ``batch["rows"]`` (batch,) indexes
        the cached targets."""
        rows = batch["rows"].cpu()
        mask = batch["attention_mask"]
        hidden = self.student(input_ids=batch["input_ids"], attention_mask=mask)[0]
        emb = feat.mean_pool(hidden.float(), mask.bool())
        out: dict[str, Tensor] = {}
        total = emb.sum() * 0.0
        if self.sim_weights:
            w = [x for _, x in self.sim_weights]
            target = sim.ensemble_similarity(
                [self.targets[i][rows].to(emb.device) for i, _ in self.sim_weights], w
            )
            out["sentence_similarity@ensemble"] = v = sim.similarity_matrix_mse(emb, target)
            total = total + sum(w) * v
        for label, i, term, w, key in self.embed_terms:
            t = self.targets[i][rows].to(emb.device)
            s = self.projectors[key](emb) if key else emb
            fn = feat.sentence_embedding_mse if term.name == "sentence_mse" else (
                feat.sentence_embedding_cosine)  # fmt: skip
            out[label] = v = fn(s, t)
            total = total + w * v
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


def run_teachers(
    cfg: DistillConfig,
    student: nn.Module,
    tok,
    run_dir: Path,
    device: torch.device,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train ``student`` (already built) on the cached targets of ``cfg.teachers``; evaluate,
    export to ``run_dir/student`` and return the results entries."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise AttnkdError("teachers: runs in one process (the targets are cached; torchrun "
                          "adds nothing here)")  # fmt: skip
    check_teachers_static(cfg)
    d = cfg.data
    splits = eval_splits(cfg)
    corpus = build_sentence_corpus(cfg, splits)
    log.info("corpus: %s", corpus.summary())
    targets = [teacher_targets(t.name, corpus.sentences, d.max_length) for t in cfg.teachers]
    if cfg.train.freeze_embeddings:
        freeze_input_embeddings(student)
    module = SentenceTargetDistiller(student, cfg.teachers, [t.embeddings for t in targets])
    module.to(device)
    grouped = GroupedBatches(corpus.sentences, tok, cfg.train.batch_size, d.max_length,
                             cfg.train.seed)  # fmt: skip

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
        result = fit(cfg.train, module, step, _RowBatches(grouped), run_dir, evaluate=evaluate,
                     select_metric="spearman", resume=resume, progress=progress)  # fmt: skip
        best_step, best_metric, steps = result.best_step, result.best_metric, result.steps_done
        if best_step is not None:
            load_checkpoint(run_dir / "checkpoints" / "best", module)
    train_s = time.time() - t0
    s_eval = score(splits.eval)
    teachers = []
    for entry, tt in zip(cfg.teachers, targets):
        r, _ = _teacher_score(entry.name, splits.eval, d.max_length)
        teachers.append({"name": entry.name, "weight": entry.weight, "spearman": r.spearman,
                         "cache": tt.cache_file, "encoded_this_run": tt.encoded,
                         "target_seconds": tt.seconds})  # fmt: skip
    export_student(student, tok, run_dir / "student", max_seq_length=d.max_length,
                   modules_from=_folder(cfg.teacher.name))  # fmt: skip
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
            "select_pairs_dropped": splits.select_dropped,
        },  # fmt: skip
    }


def _folder(name: str) -> str | None:
    """The local folder of model ``name`` (its sentence-transformers modules), or None."""
    from attnkd.models.hub import resolve_model_path

    resolved = resolve_model_path(name)
    return None if resolved.source == "hub" else resolved.path
