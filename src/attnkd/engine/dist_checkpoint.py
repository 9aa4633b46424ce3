"""Checkpoints of a run on many ranks, in the single-process format (rank 0 writes).

Under DDP every rank holds the full weights, so rank 0 simply writes them. Under FSDP2 each rank
holds a shard: the full state is gathered to rank 0 with ``torch.distributed.checkpoint``'s
``get_model_state_dict`` / ``get_optimizer_state_dict`` (``full_state_dict=True``), the optimizer
state re-keyed by parameter index as ``optimizer.state_dict()`` keys it, and written by
:func:`attnkd.engine.checkpoint.save_checkpoint`. Loading reads the same files on every rank and
keeps each rank's shard (``set_model_state_dict`` / ``set_optimizer_state_dict``). A checkpoint
therefore loads in one process as well as at any world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnkd.engine import checkpoint
from attnkd.engine.checkpoint import TrainState
from attnkd.engine.distributed import barrier, current, is_sharded
from attnkd.engine.rng import RngState


def save_checkpoint(
    path: str | os.PathLike,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    rng: RngState | None = None,
    extra: dict[str, Any] | None = None,
    scaler: dict[str, Any] | None = None,
) -> None:
    """:func:`attnkd.engine.checkpoint.save_checkpoint` from every rank: rank 0 writes.

    Collective: every rank must call it. Under FSDP2 the full state (weights and optimizer,
    keyed as in one process) is gathered to rank 0 first, so the files are the single-process
    format. The other ranks wait until the checkpoint is on disk.
    """
    ctx = current()
    model_src: Any = module
    optim_src: Any = optimizer
    if is_sharded(module):
        model_src = _Full(_full_model(module))
        optim_src = None if optimizer is None else _Full(_full_optimizer(module, optimizer))
    if ctx.is_main:
        checkpoint.save_checkpoint(path, model_src, optim_src, state, rng, extra, scaler)
    barrier()


def load_checkpoint(
    path: str | os.PathLike, module: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> checkpoint.Checkpoint:
    """:func:`attnkd.engine.checkpoint.load_checkpoint` on every rank (each reads the files).

    Under FSDP2 the full single-process state is read and every rank keeps its shard.
    """
    if not is_sharded(module):
        return checkpoint.load_checkpoint(path, module, optimizer)
    view = _ShardedModel(module)
    opt_view = None if optimizer is None else _ShardedOptimizer(module, optimizer)
    return checkpoint.load_checkpoint(path, view, opt_view)  # type: ignore[arg-type]


def _full_options(cpu_offload: bool, strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload, strict=strict)


def _full_model(module: nn.Module, on_all_ranks: bool = False) -> dict[str, Tensor]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(module, options=_full_options(cpu_offload=not on_all_ranks))
    # gathered tensors may be views of one flat buffer; safetensors wants each its own storage
    return {k: v.detach().clone() for k, v in sd.items()}


def _param_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (its single-process indices)."""
    names = {id(p): n for n, p in module.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _full_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The gathered optimizer state keyed by parameter index, as ``optimizer.state_dict()``."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(module, optimizer, options=_full_options(cpu_offload=True))
    if not sd:  # not rank 0 (cpu_offload gathers to rank 0 only)
        return {}
    index = {n: i for i, n in enumerate(_param_names(module, optimizer))}
    state = {index[n]: v for n, v in sd["state"].items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


@dataclass
class _Full:
    """A gathered state dict posing as the module/optimizer that the writer reads."""

    sd: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return self.sd


class _ShardedModel:
    """What the checkpoint reader needs of a module, for an FSDP2-sharded one."""

    def __init__(self, module: nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, Tensor]:
        return _full_model(self.module, on_all_ranks=True)

    def load_state_dict(self, sd: dict[str, Tensor], strict: bool = True) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.module, sd, options=_full_options(cpu_offload=False))


class _ShardedOptimizer:
    """What the checkpoint reader needs of an optimizer over FSDP2-sharded parameters."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        self.module, self.optimizer = module, optimizer
        self.param_groups = optimizer.param_groups

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        names = _param_names(self.module, self.optimizer)
        by_name = {
            "state": {names[i]: v for i, v in sd["state"].items()},
            "param_groups": [
                {**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]
            ],
        }
        set_optimizer_state_dict(
            self.module,
            self.optimizer,
            by_name,
            # parameters that never had a gradient have no state, as in one process
            options=_full_options(cpu_offload=False, strict=False),
        )
