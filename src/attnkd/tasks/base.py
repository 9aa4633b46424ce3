"""The two small interfaces a task provides to the recipe runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from attnkd.config.schema import DistillConfig
from attnkd.engine.batches import ResumableBatches
from attnkd.models.load import LoadedModel


@dataclass
class TaskSetup:
    """Everything the runner needs once the teacher and student exist.

    ``evaluate()`` scores the student on the selection split (every ``train.eval_every`` steps);
    ``final()`` scores teacher and student on the evaluation split and returns the results
    entries (``eval_split``, ``teacher``, ``student``, ``retention``); ``export(folder)`` writes
    the student in its standard format.
    """

    batches: ResumableBatches
    evaluate: Callable[[], dict[str, float]]
    select_metric: str
    select_mode: str  # 'max' or 'min'
    final: Callable[[], dict]
    export: Callable[[Path], Path]
    train_info: dict = field(default_factory=dict)
    state: nn.Module | None = None
    """Buffers the task changes during training (a data mixture's weights): the runner keeps
    them inside the trained module, so they are checkpointed and resumed, never exported."""


@dataclass(frozen=True)
class Task:
    """A task: how to load its models and how to set up data and evaluation."""

    name: str
    load: Callable[..., LoadedModel]
    """``load(name, attn_implementation, tokenizer=True)``."""
    setup: Callable[[DistillConfig, nn.Module, nn.Module, object], TaskSetup]
    """``setup(cfg, teacher, student, tokenizer)``."""
    make_step: Callable | None = None
    """``make_step(teacher, distiller) -> step_fn`` when the task's batches are not token
    batches (image classification); None uses :func:`attnkd.distill.make_step`."""
    runs_teachers: Callable[[DistillConfig], bool] | None = None
    """``runs_teachers(cfg)``: True when the task runs this ``teachers:`` set itself (sentence:
    every term sentence-level) instead of the general teacher-set runner."""
    run_teachers: Callable[..., dict] | None = None
    """``run_teachers(cfg, run_dir, device, resume, progress) -> results`` for such a set."""
    prepare: Callable[[DistillConfig, Callable], None] | None = None
    """``prepare(cfg, run_recipe)`` runs before the models load (image classification: the
    teacher stage, run with ``run_recipe(cfg, resume)``, the recipe runner)."""
