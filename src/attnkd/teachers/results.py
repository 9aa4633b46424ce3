"""What a run with a teacher strategy scores and reports beyond the single-teacher results."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from attnkd.models.load import count_parameters
from attnkd.teachers.load import EnsembleClassifier
from attnkd.teachers.steps import MutualPair

__all__ = ["scored_teacher", "teaching_results"]


def scored_teacher(cfg, teacher, members, distiller) -> nn.Module:
    """What the task scores as the teacher: the peer (mutual), the ensemble (an image teacher
    set: the mean of the teachers' probabilities), else the (first) teacher."""
    if isinstance(distiller, MutualPair):
        return distiller.peer
    if members and cfg.task == "image_classification":
        return EnsembleClassifier([m.model for m in members], [e.weight for e in cfg.teachers])
    return teacher


def teaching_results(cfg, task, world_cfg, members, distiller, tok, run_dir: Path) -> dict:
    """Results entries of the teacher strategies: each teacher's own score (image task), or the
    trained peer (exported to ``run_dir/peer``)."""
    if isinstance(distiller, MutualPair):
        peer_setup = task.setup(world_cfg, distiller.student, distiller.peer, tok)
        peer_setup.export(run_dir / "peer")
        score = peer_setup.final()["student"]
        return {"peer": {"name": cfg.strategy.peer, **score,
                         "params": count_parameters(distiller.peer)}}  # fmt: skip
    out = []
    for m in members:
        entry = {
            "label": m.label, "name": m.entry.name, "weight": m.entry.weight,
            "random_init": m.entry.random_init, "params": count_parameters(m.model),
        }  # fmt: skip
        if cfg.task == "image_classification":  # cheap to score one by one
            entry.update(task.setup(world_cfg, m.model, distiller.student, tok).final()["teacher"])
        out.append(entry)
    return {"teachers": out}
