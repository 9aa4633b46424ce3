"""Who teaches: teacher sets and ensembles, ground-truth mixing, self-distillation generations,
mutual distillation, multi-exit self-distillation and data partitions (docs/teachers.md).

The pure parts are importable from here (the self-distillation losses live with the other pure
losses in :mod:`attnkd.losses.selfdistill`, since loss terms build on them). The runner pieces:
:mod:`attnkd.teachers.set` (a teacher set in a run), :mod:`attnkd.teachers.steps` (its step
functions and mutual distillation), :mod:`attnkd.teachers.runs` (generations and partitions as
chained runs), :mod:`attnkd.teachers.validate` and :mod:`attnkd.teachers.compat` (what is
refused).
"""

from attnkd.losses.selfdistill import (
    ExitHead,
    ExitLoss,
    MixedKD,
    exit_kd,
    mixed_kd,
    mixed_targets,
    soft_cross_entropy,
)
from attnkd.teachers.partition import partition_indices
from attnkd.teachers.targets import (
    ensemble_logits,
    ensemble_mean,
    ensemble_probs,
    normalise_weights,
)

__all__ = [
    "ExitHead",
    "ExitLoss",
    "MixedKD",
    "ensemble_logits",
    "ensemble_mean",
    "ensemble_probs",
    "exit_kd",
    "mixed_kd",
    "mixed_targets",
    "normalise_weights",
    "partition_indices",
    "soft_cross_entropy",
]
