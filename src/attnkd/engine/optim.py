"""AdamW with decoupled weight decay, no decay on biases and normalisation weights.

Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnkd.config.schema import TrainConfig
from attnkd.errors import ConfigError

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


@dataclass
class ParamSplit:
    """Trainable parameter names with and without weight decay (for inspection and tests)."""

    decay: list[str]
    no_decay: list[str]
    frozen: list[str]


def _is_norm(mod: nn.Module) -> bool:
    # Hugging Face and custom RMSNorm/LayerNorm classes are not nn.LayerNorm subclasses.
    return isinstance(mod, _NORM_TYPES) or "norm" in type(mod).__name__.lower()


def split_parameters(module: nn.Module) -> ParamSplit:
    """Sort ``module``'s parameters into decay / no-decay / frozen (``requires_grad=False``).

    No decay: every parameter with fewer than 2 dimensions (biases, norm scales) and every
    parameter of a normalisation module. Shared (tied) parameters are listed once, under their
    first name. Freezing is the caller's choice (e.g. ``train.freeze_embeddings`` is applied
    where the student is built); the optimizer simply skips frozen parameters.
    """
    decay, no_decay, frozen = [], [], []
    seen: set[int] = set()
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if not p.requires_grad:
                frozen.append(name)
            elif p.ndim < 2 or _is_norm(mod):
                no_decay.append(name)
            else:
                decay.append(name)
    return ParamSplit(decay, no_decay, frozen)


def build_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``module``'s trainable parameters: group 0 decays, group 1 does not.

    Each group carries ``initial_lr`` (= ``cfg.lr``); the schedule scales ``lr`` from it.
    """
    if cfg.lr <= 0:
        raise ConfigError("train.lr", f"must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConfigError("train.weight_decay", f"must be >= 0, got {cfg.weight_decay}")
    split = split_parameters(module)
    params = dict(module.named_parameters())
    groups = [
        {"params": [params[n] for n in split.decay], "weight_decay": cfg.weight_decay},
        {"params": [params[n] for n in split.no_decay], "weight_decay": 0.0},
    ]
    if not split.decay and not split.no_decay:
        raise ConfigError("module", "has no trainable parameters")
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    for g in opt.param_groups:
        g["initial_lr"] = cfg.lr
    return opt
