"""Validation of the teacher strategies (``teachers:``, ``strategy:``) before anything loads.

A teacher set is checked one teacher at a time with the task's own validation: the recipe with
``teacher`` = that teacher and ``losses`` = its own terms followed by the ensemble terms, so layers,
widths and term settings are checked against every teacher; errors are re-keyed to
``teachers[i]...``. Then the set-level rules: labels, weights, ensemble-averageable taps and
tokenizer compatibility (:mod:`attnkd.teachers.compat`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from attnkd.config.schema import DistillConfig, StrategyConfig, TeacherConfig
from attnkd.errors import ConfigError
from attnkd.teachers.compat import check_ensemble_term, check_set_tokenizers
from attnkd.teachers.set import member_labels

__all__ = ["validate_teaching"]

IMAGE_ONLY = "image_classification"


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def _message(err: ConfigError) -> str:
    text = str(err)
    prefix = f"config error at '{err.key}': "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _rekey(err: ConfigError, i: int, n_own: int, label: str) -> ConfigError:
    """Map a key of the one-teacher recipe back to the teacher set's config."""
    key = err.key
    if key.startswith("teacher."):
        return ConfigError(f"teachers[{i}].{key[len('teacher.') :]}", _message(err))
    if key.startswith("losses["):
        j = int(key[len("losses[") : key.index("]")])
        rest = key[key.index("]") + 1 :]
        new = f"teachers[{i}].losses[{j}]{rest}" if j < n_own else f"losses[{j - n_own}]{rest}"
        return ConfigError(new, f"(teacher '{label}') {_message(err)}")
    return err


def _check_strategy(cfg: DistillConfig) -> None:
    s = cfg.strategy
    _check(s.generations >= 1, "strategy.generations", f"must be >= 1, got {s.generations}")
    _check(s.partitions >= 1, "strategy.partitions", f"must be >= 1, got {s.partitions}")
    _check(s.part is None or 0 <= s.part < s.partitions, "strategy.part",
           f"must be in [0, {s.partitions}) or null, got {s.part}")  # fmt: skip
    _check(s.generations == 1 or s.partitions == 1, "strategy.partitions",
           "generations of partitioned students: use one or the other")  # fmt: skip
    if s.partitions > 1:
        _check(cfg.task == IMAGE_ONLY, "strategy.partitions",
               f"data partitions are supported for {IMAGE_ONLY} only")  # fmt: skip
    if s.peer:
        _check(
            not cfg.teachers,
            "strategy.peer",
            "mutual distillation trains two models from each other: leave teachers empty",
        )
        _check(cfg.teacher.name == "none", "teacher.name",
               "with strategy.peer the peer is the teacher: set teacher.name: none")  # fmt: skip
        _check(cfg.train.teacher_dtype is None, "train.teacher_dtype",
               "the peer is trained, not a frozen teacher: leave teacher_dtype null")  # fmt: skip
        _check(s.generations == 1, "strategy.generations", "not combined with strategy.peer")
    if cfg.teachers or s.peer:
        _check(not cfg.train.shard_teacher, "train.shard_teacher",
               "not supported with a teacher set or a peer")  # fmt: skip


def validate_teaching(
    cfg: DistillConfig,
    validate_one: Callable[..., None],
    validate_models: Callable,
    check_data: bool,
    check_models: bool,
) -> None:
    """Check ``cfg``'s teacher strategies; ``validate_one(cfg, check_data, check_models)`` is
    the single-teacher validation it runs per teacher (or on the recipe as written), and
    ``validate_models(cfg) -> Geometries`` the model check of a transformer recipe
    (:mod:`attnkd.validate`, which sits above this package)."""
    _check_strategy(cfg)
    plain = replace(cfg, strategy=StrategyConfig())
    if cfg.strategy.peer:  # validated as if the peer were the (frozen) teacher
        as_teacher = replace(plain, teacher=TeacherConfig(name=cfg.strategy.peer))
        try:
            validate_one(as_teacher, check_data, check_models)
        except ConfigError as err:
            if err.key.startswith("teacher."):
                raise ConfigError("strategy.peer", _message(err)) from None
            raise
        return
    if not cfg.teachers:
        return validate_one(plain, check_data, check_models)
    _check(cfg.teacher == TeacherConfig(), "teacher",
           "give a single `teacher:` or a `teachers:` list, not both")  # fmt: skip
    labels = member_labels(cfg.teachers)
    for i, e in enumerate(cfg.teachers):
        _check(bool(e.name), f"teachers[{i}].name", "name the teacher (model, folder or builder)")
        _check(e.weight >= 0, f"teachers[{i}].weight", f"must be >= 0, got {e.weight}")
    _check(sum(e.weight for e in cfg.teachers) > 0, "teachers",
           "the teachers' weights are all 0")  # fmt: skip
    _check(any(e.losses for e in cfg.teachers) or bool(cfg.losses), "losses",
           "a teacher set needs at least one loss term")  # fmt: skip
    from attnkd.losses.terms import TERMS

    for j, term in enumerate(cfg.losses):
        _check(term.name in TERMS, f"losses[{j}].name", f"unknown loss '{term.name}'")
        check_ensemble_term(term.name, TERMS.get(term.name).cls.teacher_kinds, f"losses[{j}].name")
    for i, e in enumerate(cfg.teachers):
        losses = list(e.losses) + list(cfg.losses)
        if not losses:
            continue
        one = replace(plain, teachers=[], losses=losses,
                      teacher=TeacherConfig(e.name, e.attn_implementation, e.recipe))  # fmt: skip
        try:
            validate_one(one, check_data and i == 0, check_models)
        except ConfigError as err:
            raise _rekey(err, i, len(e.losses), labels[i]) from None
    if check_models and cfg.task != IMAGE_ONLY:
        _check_set_terms(cfg, plain, validate_models)
        _check_tokenizers(cfg, labels)


def _check_set_terms(cfg: DistillConfig, plain: DistillConfig, validate_models) -> None:
    """Build the set's routed terms against every teacher's geometry (``config.json`` only):
    taps known only once a term is built (relations read q/k/v) and layer agreement."""
    from attnkd.teachers.set import build_set_terms

    geos = [
        validate_models(replace(plain, teachers=[], losses=[], teacher=TeacherConfig(
            e.name, e.attn_implementation, e.recipe)))
        for e in cfg.teachers
    ]  # fmt: skip
    build_set_terms(cfg, [g.teacher for g in geos], geos[0].student)


def _check_tokenizers(cfg: DistillConfig, labels: list[str]) -> None:
    """Every teacher reads the batches of the first teacher's tokenizer; a teacher whose
    vocabulary differs may use sentence-level terms only (and needs its own tokenisation,
    which this runner does not do: refused with a clear error)."""
    for i, (e, same) in enumerate(zip(cfg.teachers, check_set_tokenizers(cfg, labels),
                                      strict=True)):  # fmt: skip
        if same is False:
            raise ConfigError(
                f"teachers[{i}].name",
                f"teacher '{labels[i]}' ({e.name}) tokenizes differently from the "
                "student; its sentence-level terms are allowed, but this runner feeds every "
                "teacher the student's token ids: separate tokenisation per teacher is the "
                "sentence task's (docs/teachers.md)",
            )
