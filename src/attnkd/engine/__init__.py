"""Training engine: one explicit loop with exact resume, atomic safetensors checkpoints,
warmup + decay schedule, JSONL/TensorBoard metrics.

>>> from attnkd.engine import fit, StepOutput, ShuffledBatches
"""

from attnkd.engine import distributed
from attnkd.engine.batches import ResumableBatches, ShuffledBatches
from attnkd.engine.checkpoint import (
    Checkpoint,
    CheckpointError,
    TrainState,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from attnkd.engine.loop import FitResult, StepOutput, fit
from attnkd.engine.metrics import MetricsWriter, read_metrics
from attnkd.engine.optim import build_optimizer, split_parameters
from attnkd.engine.rng import capture_rng, fork_rng, restore_rng, seed_everything
from attnkd.engine.schedule import Schedule

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FitResult",
    "MetricsWriter",
    "ResumableBatches",
    "Schedule",
    "ShuffledBatches",
    "StepOutput",
    "TrainState",
    "build_optimizer",
    "distributed",
    "capture_rng",
    "fit",
    "fork_rng",
    "load_checkpoint",
    "read_metrics",
    "read_state",
    "restore_rng",
    "save_checkpoint",
    "seed_everything",
    "split_parameters",
]
