"""Learning-rate schedule: linear warmup, then linear or cosine decay to zero.

The schedule is a pure function of the optimizer step, so resuming needs only the step count.
Step ``t`` (0-based, the update about to be taken) gets ``base_lr * factor(t)``. With ``W``
warmup steps the peak is step ``p = max(W - 1, 0)`` and

* warmup, ``t < W``: ``factor = (t + 1) / W`` (the first update already has a non-zero rate,
  the last warmup step has the full rate);
* decay, ``t >= max(W, p)``: ``q = (t - p) / (T - p)``; linear ``1 - q``, cosine
  ``(1 + cos(pi * q)) / 2``;

so the factor rises strictly to 1, then falls strictly and would reach 0 at ``t = T`` (one past
the last update): no step is wasted at rate 0 and the peak is not held twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnkd.config.schema import TrainConfig
from attnkd.errors import ConfigError

DECAYS = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class Schedule:
    """Warmup + decay over ``max_steps`` optimizer steps."""

    max_steps: int
    warmup_steps: int = 0
    decay: str = "linear"
    """'linear', 'cosine', or 'constant' (no decay after warmup)."""

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError("train.max_steps", f"must be >= 1, got {self.max_steps}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ConfigError(
                "train.warmup_ratio",
                f"warmup of {self.warmup_steps} steps does not fit in {self.max_steps} steps",
            )
        if self.decay not in DECAYS:
            raise ConfigError("decay", f"unknown decay '{self.decay}'; known: {', '.join(DECAYS)}")

    @classmethod
    def from_config(cls, cfg: TrainConfig, decay: str = "linear") -> Schedule:
        """Warmup of ``warmup_ratio * max_steps`` steps (halves round up), then ``decay``."""
        if not 0.0 <= cfg.warmup_ratio <= 1.0:
            raise ConfigError("train.warmup_ratio", f"must be in [0, 1], got {cfg.warmup_ratio}")
        return cls(cfg.max_steps, math.floor(cfg.warmup_ratio * cfg.max_steps + 0.5), decay)

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate for 0-based update ``step``."""
        w, t_max = self.warmup_steps, self.max_steps
        if step < w:
            return (step + 1) / w
        peak = max(w - 1, 0)
        if self.decay == "constant" or t_max == peak:
            return 1.0
        q = min(max((step - peak) / (t_max - peak), 0.0), 1.0)
        if self.decay == "linear":
            return 1.0 - q
        return 0.5 * (1.0 + math.cos(math.pi * q))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set each param group's ``lr`` to ``initial_lr * factor(step)``; returns group 0's lr."""
        f = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
        return optimizer.param_groups[0]["lr"]
