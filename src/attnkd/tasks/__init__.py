"""What a distillation run is evaluated on: one module per task, chosen by ``cfg.task``.

A task loads the models of its kind, builds the training batches and the selection/evaluation
splits, and says how to score and export the student; :func:`attnkd.distill.run_distill` is the
same for every task.
"""

from __future__ import annotations

from attnkd.tasks.base import Task, TaskSetup

TASK_NAMES = ("sentence", "causal_lm", "image_classification", "sequence_classification")


def get_task(name: str) -> Task:
    """The task module for ``name`` (one of :data:`TASK_NAMES`)."""
    if name == "sentence":
        from attnkd.tasks import sentence

        return sentence.TASK
    if name == "causal_lm":
        from attnkd.tasks import causal_lm

        return causal_lm.TASK
    if name == "image_classification":
        from attnkd.tasks import image_classification

        return image_classification.TASK
    if name == "sequence_classification":
        from attnkd.tasks import sequence_classification

        return sequence_classification.TASK
    raise ValueError(f"unknown task '{name}'; expected one of {TASK_NAMES}")


__all__ = ["TASK_NAMES", "Task", "TaskSetup", "get_task"]
