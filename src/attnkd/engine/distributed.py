"""Many processes through PyTorch's own stack: torchrun, DDP or FSDP2, rank-sharded batches.

``torchrun --nproc-per-node N -m attnkd distill recipe.yaml`` starts N copies of the same
program; torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) tells each who it is, and :func:`init` joins them into one process group (NCCL
on CUDA, gloo on CPU). Everything that differs from a single process lives here; the loop calls
these functions at a handful of marked lines and stays one loop for one process and many.

- **Batches**: ``train.batch_size`` is the batch of *one process* (per rank, per micro-batch).
  The task builds global batches of ``world_size * batch_size`` rows in the single-process order;
  :class:`RankShard` gives rank ``r`` rows ``[r*b, (r+1)*b)``. Batch order and resume therefore
  stay a pure function of the step, and N ranks with batch ``b`` see exactly the rows one process
  with batch ``N*b`` sees.
- **Gradients**: :func:`wrap` puts the trained module (student + loss terms, never the teacher)
  under DDP (gradients averaged over ranks) or FSDP2 ``fully_shard`` (parameters, gradients and
  optimizer state sharded; for students too large for one device). Averaging per-rank means
  equals the mean over the global batch when every rank's loss averages the same number of
  items (always so for fixed-length LM blocks; for padded sentence batches the token counts of
  the slices differ a little, as under any DDP).
- **Writes**: only rank 0 writes metrics, checkpoints, results and exports. Logged loss and term
  values are averaged over ranks first. Checkpoints hold the full (gathered) state in the
  single-process format (:mod:`attnkd.engine.dist_checkpoint`), so they load in one process, and
  a run resumes at another world size (weights, optimizer, step; the batch sequence is exact only
  at the same global batch size). Every rank reads the checkpoint on resume: across nodes, the
  run folder must be on a shared filesystem.
- **Evaluation**: under DDP rank 0 evaluates while the others wait, and the metrics are then
  broadcast so every rank takes the same best-checkpoint decision; under FSDP the weights are
  sharded, so every rank runs the evaluation forward together (same data, same result).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnkd.errors import ConfigError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistContext:
    """Who this process is. The single-process context is ``DistContext()``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(name, f"environment variable must be an integer, got '{value}'") from None


def from_env(device: torch.device | None = None) -> DistContext:
    """The context torchrun's environment describes (rank 0 of 1 when not under torchrun).

    ``device``: where this process trains (``train.device`` resolved; None: CUDA if available,
    else CPU). Under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``: one GPU per process.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError("RANK", f"rank {rank} does not fit WORLD_SIZE={world}")
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if world > 1 and device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                "LOCAL_RANK",
                f"{local} but this node has {torch.cuda.device_count()} CUDA devices "
                "(use --nproc-per-node <= the number of GPUs)",
            )
        device = torch.device("cuda", local)
    return DistContext(rank, world, local, device)


_device: torch.device | None = None
"""The device :func:`init` chose for this process."""


def init(device: torch.device | None = None) -> DistContext:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (NCCL when ``device`` is CUDA,
    gloo otherwise); see :func:`from_env` for the device.

    Idempotent; a single process gets its context and no process group. Ranks other than 0 log
    warnings and errors only.
    """
    global _device
    ctx = from_env(device)
    _device = ctx.device
    if ctx.is_distributed and not dist.is_initialized():
        if ctx.device.type == "cuda":
            torch.cuda.set_device(ctx.device)
        backend = "nccl" if ctx.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size)
        if not ctx.is_main:  # one copy of the progress messages, from rank 0
            logging.getLogger("attnkd").setLevel(logging.WARNING)
    return ctx


def current() -> DistContext:
    """The context of the process group this process has joined (``DistContext()`` if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    env = from_env(_device)
    return DistContext(dist.get_rank(), dist.get_world_size(), env.local_rank, env.device)


def teardown() -> None:
    """Leave the process group (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ wrapping


def is_sharded(module: nn.Module) -> bool:
    """True when ``module`` was sharded by FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def check_strategy(strategy: str) -> None:
    """Raise :class:`ConfigError` unless ``strategy`` is 'ddp' or 'fsdp' (``train.distributed``)."""
    if strategy not in STRATEGIES:
        raise ConfigError("train.distributed", f"must be one of {STRATEGIES}, got '{strategy}'")


def wrap(module: nn.Module, strategy: str = "ddp") -> nn.Module:
    """What the training step should call: ``module`` itself in one process, else DDP or FSDP2.

    'ddp' returns a ``DistributedDataParallel`` wrapper around ``module`` (whose parameters stay
    those of ``module``, so the optimizer and checkpoints keep using ``module``). 'fsdp' shards
    ``module`` in place with ``fully_shard``: each element of every ``nn.ModuleList`` (the
    transformer blocks) is its own unit, then each other child of ``module`` (so the student
    can be called alone, as evaluation does), then the root; the returned object is ``module``.
    Weights are gathered per block for forward and kept until that block's backward.
    Only pass the trained module: the teacher stays outside, gets no gradients and no
    optimizer state.
    """
    check_strategy(strategy)
    ctx = current()
    if not ctx.is_distributed:
        return module
    if strategy == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # find_unused_parameters: students keep parts no loss reads (e.g. BERT's pooler);
        # DDP leaves the gradients of parameters unused on every rank as they were (None).
        return nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=True
        )
    from torch.distributed.fsdp import fully_shard

    # Losses read tensors captured *inside* blocks (q, k, v), so a block's backward can begin
    # without passing through its output, where FSDP2 would gather the weights again: blocks
    # therefore keep their weights gathered from forward until their backward (ZeRO-2-like;
    # gradients and optimizer state stay sharded).
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList):
            for block in sub:
                if _trainable(block):
                    fully_shard(block, reshard_after_forward=False)
    for child in module.children():  # e.g. the student, which evaluation calls on its own
        if not isinstance(child, nn.ModuleList) and _trainable(child) and not is_sharded(child):
            fully_shard(child, reshard_after_forward=False)
    fully_shard(module, reshard_after_forward=False)
    return module


def shard_frozen(module: nn.Module) -> nn.Module:
    """Shard a frozen model (the teacher) over the ranks with FSDP2, in place; one process: as is.

    Each element of every ``nn.ModuleList`` (the blocks) and then the root become FSDP2 units
    that gather their weights for their own forward and free them after it
    (``reshard_after_forward=True``), so at most one block is whole on a rank at a time. The
    module keeps its structure, so forward hooks on submodules (q/k/v capture) work as before.
    Every rank must call its forward on the same step (the gathers are collectives).
    """
    ctx = current()
    if not ctx.is_distributed:
        return module
    if _trainable(module):
        raise ConfigError("train.shard_teacher", "the module to shard must be frozen")
    from torch.distributed.fsdp import fully_shard

    for sub in module.modules():
        if isinstance(sub, nn.ModuleList):
            for block in sub:
                fully_shard(block, reshard_after_forward=True)
    fully_shard(module, reshard_after_forward=True)
    return module


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


# ------------------------------------------------------------------------------ batches


class RankShard:
    """This rank's rows of another :class:`~attnkd.engine.batches.ResumableBatches`.

    ``batches`` must yield global batches of ``world_size * batch_size`` rows (a tensor, or a
    dict/list of tensors sharing dim 0); rank ``r`` takes rows ``[r*b, (r+1)*b)``. Padding is
    kept as in the global batch, so every rank runs the same sequence length.
    """

    def __init__(self, batches: Any, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.batches, self.rank, self.world_size = batches, rank, world_size

    @property
    def num_batches(self) -> int:
        return self.batches.num_batches

    def batch_at(self, epoch: int, index: int) -> Any:
        return shard_rows(self.batches.batch_at(epoch, index), self.rank, self.world_size)


def shard_rows(batch: Any, rank: int, world_size: int) -> Any:
    """Rows ``[rank*b, (rank+1)*b)`` of every tensor in ``batch`` (rows = world_size * b)."""
    if isinstance(batch, Tensor):
        rows = batch.shape[0]
        if rows % world_size:
            raise ValueError(
                f"a global batch of {rows} rows does not split evenly over {world_size} ranks"
            )
        b = rows // world_size
        return batch[rank * b : (rank + 1) * b]
    if isinstance(batch, dict):
        return {k: shard_rows(v, rank, world_size) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(shard_rows(v, rank, world_size) for v in batch)
    raise TypeError(f"cannot shard a batch of type {type(batch).__name__} by rows")


# ------------------------------------------------------------------------ collectives


def mean_over_ranks(values: list[float]) -> list[float]:
    """Element-wise mean of ``values`` over all ranks (identity in one process)."""
    if not current().is_distributed or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def sum_over_ranks(value: int) -> int:
    """Sum of an integer over all ranks (identity in one process)."""
    if not current().is_distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t)
    return int(t.item())


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true on every rank when it is true on any (ranks must stop together)."""
    if not current().is_distributed:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def same_problem(problem: str | None) -> str | None:
    """This rank's problem with the step, or one on another rank: all skip or abort together."""
    if not current().is_distributed:
        return problem
    (anywhere,) = any_rank(problem is not None)
    if anywhere and problem is None:
        return f"non-finite values on another rank than {current().rank} (see its log)"
    return problem


def barrier() -> None:
    if current().is_distributed:
        dist.barrier()


def local_value(t: Tensor) -> Tensor:
    """A plain tensor from a DTensor result (FSDP2's grad norm); plain tensors pass through."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def evaluate_on_ranks(evaluate: Callable[[], dict[str, float]], sharded: bool) -> dict[str, float]:
    """Run ``evaluate`` where the weights allow it and give every rank its result.

    Unsharded (one process, DDP): rank 0 evaluates, the others wait, the metrics are broadcast.
    Sharded (FSDP2): every rank runs it (each forward gathers the weights collectively).
    """
    ctx = current()
    if not ctx.is_distributed or sharded:
        return {k: float(v) for k, v in evaluate().items()}
    box: list[Any] = [None]
    error: Exception | None = None
    if ctx.is_main:
        try:
            box[0] = {k: float(v) for k, v in evaluate().items()}
        except Exception as e:  # the others must not wait forever for a result
            error, box[0] = e, f"{type(e).__name__}: {e}"
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if isinstance(box[0], str):
        raise RuntimeError(f"evaluation failed on rank 0: {box[0]}")
    return box[0]


def _comm_device() -> torch.device:
    return current().device if dist.get_backend() == "nccl" else torch.device("cpu")


class NullWriter:
    """Stands in for :class:`~attnkd.engine.metrics.MetricsWriter` on ranks other than 0."""

    def log(self, event: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
