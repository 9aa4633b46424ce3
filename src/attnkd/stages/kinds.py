"""Stage kinds: what runs one stage of a staged run, by name (``stages[i].kind``).

A kind is a runner ``run(cfg, resume, progress, overwrite) -> results dict`` with the contract of
:func:`attnkd.distill.run_distill`: it trains in ``cfg.output_dir/cfg.name`` (a normal run
folder: ``config.yaml``, checkpoints, ``results.json``), continues from its step checkpoint when
``resume`` is true, exports the stage's model to ``student/`` (what the next stage receives as
its student or teacher) and returns what it wrote to ``results.json``. Register new kinds with
:func:`register_kind` (conversion stages, preference optimisation, ...); ``attnkd ls stages``
lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attnkd.config.schema import DistillConfig
from attnkd.registry import Registry

StageRunner = Callable[[DistillConfig, bool, bool, bool], "dict | None"]


@dataclass(frozen=True)
class StageKind:
    """A registered stage kind: its runner and a one-line summary."""

    name: str
    run: StageRunner
    summary: str


KINDS: Registry[StageKind] = Registry("stage kind")


def register_kind(name: str, summary: str) -> Callable[[StageRunner], StageRunner]:
    """Decorator: register ``run(cfg, resume, progress, overwrite)`` as stage kind ``name``
    (a duplicate name raises ``KeyError``)."""

    def deco(fn: StageRunner) -> StageRunner:
        KINDS.register(name)(StageKind(name, fn, summary))
        return fn

    return deco


def get_kind(name: str) -> StageKind:
    return KINDS.get(name)


@register_kind("distill", "a distillation run (run_distill): teacher, data, losses, schedule")
def _run_distill(cfg: DistillConfig, resume: bool, progress: bool, overwrite: bool) -> dict | None:
    from attnkd.distill import run_distill

    return run_distill(cfg, resume=resume, progress=progress, overwrite=overwrite)


@register_kind(
    "convert",
    "attention conversion (attnkd convert): the stage's convert.stages on the teacher's "
    "converted copy, or on the previous stage's converted student (carry: student)",
)
def _run_convert(cfg: DistillConfig, resume: bool, progress: bool, overwrite: bool) -> dict:
    from attnkd.convert.run import run_convert

    return run_convert(cfg, resume=resume, progress=progress, overwrite=overwrite)


@register_kind("dpo", "preference stage: DPO on student samples ranked by the teacher (LLaVA-MoD)")
def _run_dpo(cfg: DistillConfig, resume: bool, progress: bool, overwrite: bool) -> dict | None:
    from attnkd.lm.dpo_stage import dpo_stage_kind

    return dpo_stage_kind(cfg, resume, progress, overwrite)


__all__ = ["KINDS", "StageKind", "StageRunner", "get_kind", "register_kind"]
