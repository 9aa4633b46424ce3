"""Training engine: one explicit loop with exact resume, atomic safetensors checkpoints (the
newest valid one resumed), device placement and mixed precision, non-finite checks every step,
clean stop on SIGTERM, warmup + decay schedule, JSONL/TensorBoard metrics.

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
    verify_checkpoint,
)
from attnkd.engine.device import resolve_device, to_device
from attnkd.engine.loop import FitResult, StepOutput, fit
from attnkd.engine.metrics import MetricsWriter, read_metrics
from attnkd.engine.nonfinite import NonFiniteError
from attnkd.engine.optim import build_optimizer, split_parameters
from attnkd.engine.resume import ResumePoint, find_resumable
from attnkd.engine.rng import capture_rng, fork_rng, restore_rng, seed_everything
from attnkd.engine.schedule import Schedule
from attnkd.engine.signals import Terminated

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FitResult",
    "MetricsWriter",
    "NonFiniteError",
    "ResumableBatches",
    "ResumePoint",
    "Schedule",
    "ShuffledBatches",
    "StepOutput",
    "Terminated",
    "TrainState",
    "build_optimizer",
    "distributed",
    "capture_rng",
    "find_resumable",
    "fit",
    "fork_rng",
    "load_checkpoint",
    "read_metrics",
    "read_state",
    "resolve_device",
    "restore_rng",
    "save_checkpoint",
    "seed_everything",
    "split_parameters",
    "to_device",
    "verify_checkpoint",
]
