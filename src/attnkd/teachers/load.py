"""Load a teacher set for a run, and the model that stands for the whole set when scored."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import Tensor, nn

from attnkd.config.schema import DistillConfig, TeacherConfig
from attnkd.models.load import freeze
from attnkd.teachers.set import Member, member_labels, reinit_
from attnkd.teachers.targets import ensemble_probs

log = logging.getLogger("attnkd")

__all__ = ["EnsembleClassifier", "load_members", "prepare_members"]


def prepare_members(cfg: DistillConfig, task, run_recipe) -> None:
    """Run each teacher's recipe first when its model does not exist yet (the task's
    ``prepare``, e.g. the image task's teacher stage), one teacher at a time."""
    if task.prepare is None:
        return
    for entry in cfg.teachers:
        one = replace(cfg, teacher=TeacherConfig(entry.name, entry.attn_implementation,
                                                 entry.recipe), teachers=[])  # fmt: skip
        task.prepare(one, run_recipe)


def load_members(cfg: DistillConfig, task) -> tuple[list[Member], object]:
    """Every teacher of ``cfg.teachers``, frozen (random-initialised where ``random_init``),
    and the first teacher's tokenizer (the one the batches are built with)."""
    members, tokenizer = [], None
    for i, (entry, label) in enumerate(zip(cfg.teachers, member_labels(cfg.teachers),
                                           strict=True)):  # fmt: skip
        loaded = task.load(entry.name, entry.attn_implementation)
        model = loaded.model
        if entry.random_init:
            reinit_(model, cfg.train.seed + 1000 + i)
            log.info("teacher %s (%s): weights re-initialised at random", label, entry.name)
        members.append(Member(label, freeze(model), loaded.geometry, entry))
        if i == 0:
            tokenizer = loaded.tokenizer
    return members, tokenizer


class EnsembleClassifier(nn.Module):
    """The teacher set as one classifier: ``forward(x) -> log Σ_i w_i softmax(f_i(x))`` (B,
    classes), so its argmax is the ensemble's prediction (scored as 'the teacher')."""

    def __init__(self, models: list[nn.Module], weights: list[float]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.weights = weights
        self.config = models[0].config

    def forward(self, pixel_values: Tensor, **_: object) -> Tensor:
        logits = [m(pixel_values) for m in self.models]
        return torch.log(ensemble_probs(logits, self.weights))
