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


__all__ = ["KINDS", "StageKind", "StageRunner", "get_kind", "register_kind"]
