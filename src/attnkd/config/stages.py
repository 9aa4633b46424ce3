"""Staged runs: a recipe's ``stages:`` (or ``chain:``) resolved into one full config per stage.

A stage is the recipe itself with the stage's sections merged over it key by key (``losses``, when
the stage gives it, replaces the list whole), run as a normal run in
``<output_dir>/<name>/stages/NN-<stage>/``. What a stage takes from the one before is its
``carry``: 'student' (default: it continues training the previous stage's exported student, so
``student.init`` becomes that folder), 'teacher' (the previous stage's student is its teacher:
teacher-assistant chains) or 'none'. Pure config: nothing here loads a model or runs anything
(the runner is :mod:`attnkd.stages`).

A ``chain: {assistant: {...}}`` expands into two stages, 'assistant' (the top-level teacher
distilled into an assistant cut from it) and 'student' (the assistant distilled into the
top-level student, cut from the assistant), as MiniLM and TAKD do.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkd.config.io import from_dict, to_dict
from attnkd.config.schema import STAGE_SECTIONS, ChainConfig, DistillConfig, StageConfig
from attnkd.errors import ConfigError

CARRY = ("student", "teacher", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

__all__ = ["CARRY", "Stage", "chain_stages", "check_stages", "is_staged", "stage_plan"]


@dataclass(frozen=True)
class Stage:
    """One resolved stage: its place, name, runner kind, what it carries, and its full config
    (``cfg.output_dir`` is ``<run>/stages``, ``cfg.name`` is ``NN-<name>``)."""

    index: int
    name: str
    kind: str
    carry: str
    cfg: DistillConfig

    @property
    def folder(self) -> str:
        """``NN-<name>``: the stage's run folder under ``<run>/stages``."""
        return self.cfg.name

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir) / self.cfg.name


def is_staged(cfg: DistillConfig) -> bool:
    """True when ``cfg`` is a staged run (``stages:`` or ``chain:``)."""
    return bool(cfg.stages) or cfg.chain.assistant is not None


def check_stages(cfg: DistillConfig) -> None:
    """Raise :class:`ConfigError` (naming ``stages[i]....``) if a stage does not resolve."""
    stage_plan(cfg)


def stage_plan(cfg: DistillConfig) -> list[Stage]:
    """The stages of ``cfg`` with their full configs, in order; ``[]`` for a one-stage run."""
    if cfg.stages and cfg.chain.assistant is not None:
        raise ConfigError("chain", "give stages or chain.assistant, not both")
    stages = chain_stages(cfg) if cfg.chain.assistant is not None else cfg.stages
    base = to_dict(cfg)
    base["stages"], base["chain"] = [], to_dict(ChainConfig())
    root = Path(cfg.output_dir) / cfg.name / "stages"
    plan: list[Stage] = []
    seen: set[str] = set()
    for i, st in enumerate(stages):
        where = f"stages[{i}]"
        if not _NAME.match(st.name):
            raise ConfigError(f"{where}.name", f"expected letters, digits, '-' or '_', got "
                              f"'{st.name}'")  # fmt: skip
        if st.name in seen:
            raise ConfigError(f"{where}.name", f"duplicate stage name '{st.name}'")
        seen.add(st.name)
        if st.carry not in CARRY:
            raise ConfigError(f"{where}.carry", f"expected one of {CARRY}, got '{st.carry}'")
        if not st.kind:
            raise ConfigError(f"{where}.kind", "must name a stage kind (e.g. 'distill')")
        data = copy.deepcopy(base)
        for section in STAGE_SECTIONS:
            data[section].update(copy.deepcopy(getattr(st, section)))
        if st.losses is not None:
            data["losses"] = [to_dict(t) for t in st.losses]
        data["output_dir"], data["name"] = str(root), f"{i + 1:02d}-{st.name}"
        if plan and st.carry != "none":
            _carry(data, st, where, plan[-1].run_dir / "student")
        try:
            stage_cfg = from_dict(DistillConfig, data)
        except ConfigError as err:
            raise ConfigError(f"{where}.{err.key}", f"stage '{st.name}': {err.message}") from None
        plan.append(Stage(i, st.name, st.kind, st.carry, stage_cfg))
    return plan


def _carry(data: dict[str, Any], st: StageConfig, where: str, export: Path) -> None:
    """Point the stage at the previous stage's exported student (as student or teacher)."""
    if st.carry == "student":
        if "init" in st.student:
            raise ConfigError(
                f"{where}.student.init",
                f"stage '{st.name}' continues the previous stage's student (carry: student); "
                "set carry: none to start it from another model",
            )
        data["student"]["init"] = str(export)
    else:  # teacher
        if "name" in st.teacher:
            raise ConfigError(
                f"{where}.teacher.name",
                f"stage '{st.name}' is taught by the previous stage's student (carry: teacher); "
                "set carry: none to give it another teacher",
            )
        data["teacher"]["name"], data["teacher"]["recipe"] = str(export), ""


def chain_stages(cfg: DistillConfig) -> list[StageConfig]:
    """``chain.assistant`` as two stages: teacher -> assistant, then assistant -> student.

    The assistant's keys are merged over the top-level ``student`` (cut from the teacher;
    ``layers: n`` keeps n teacher layers evenly spread, first and last included); the second
    stage's student is the top-level ``student``, cut from the assistant.
    """
    assistant = dict(cfg.chain.assistant or {})
    layers = assistant.get("layers")
    if layers is None and not assistant.get("layer_rule") and "init" not in assistant:
        raise ConfigError(
            "chain.assistant.layers",
            "give the assistant's size: a number of layers (spread evenly over the teacher's) "
            "or a list of teacher layers",
        )
    if isinstance(layers, int) and not isinstance(layers, bool):
        if layers < 1:
            raise ConfigError("chain.assistant.layers", f"must be >= 1, got {layers}")
        assistant["layers"], assistant["layer_rule"] = None, f"even:{layers}"
    elif layers is not None:
        assistant["layer_rule"] = ""
    elif assistant.get("layer_rule"):
        assistant["layers"] = None
    return [
        StageConfig(name="assistant", student=assistant, train=dict(cfg.chain.assistant_train)),
        StageConfig(name="student", carry="teacher"),
    ]
