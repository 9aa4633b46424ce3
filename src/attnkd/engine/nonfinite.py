"""Non-finite losses and gradients: what to record per micro-batch and how to name the fault.

The loop keeps one :class:`MicroBatch` per micro-batch of a step (its position and its loss
terms, plus a device-side finiteness flag for its loss) and calls :func:`nonfinite_problem` once
per step, which reads every flag (and the gradient norm's) with a single device sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnkd.errors import AttnkdError


class NonFiniteError(AttnkdError):
    """The loss or gradient of a step was NaN or infinite (``train.nonfinite: abort``)."""


@dataclass
class MicroBatch:
    """One micro-batch's outcome, kept until the step's finiteness check."""

    epoch: int
    index: int
    loss_finite: torch.Tensor  # bool scalar on the device (read with the step's one sync)
    terms: dict[str, float]


def nonfinite_problem(
    micro: list[MicroBatch], grad_norm: torch.Tensor, step: int, check_grad: bool
) -> str | None:
    """None if the step's losses (and, if ``check_grad``, gradient norm) are finite; otherwise
    which loss terms (or the gradient) were not, in which batch of which step."""
    flags = [m.loss_finite for m in micro] + ([torch.isfinite(grad_norm)] if check_grad else [])
    device = flags[0].device
    ok = torch.stack([f.to(device) for f in flags]).tolist()  # the step's one device sync
    if all(ok):
        return None
    for m, loss_ok in zip(micro, ok):
        bad = [name for name, v in m.terms.items() if not math.isfinite(float(v))]
        if not loss_ok or bad:
            what = f"loss terms {bad}" if bad else "loss (its terms are all finite)"
            return f"non-finite {what} at step {step} (epoch {m.epoch}, batch index {m.index})"
    where = ", ".join(f"epoch {m.epoch} batch index {m.index}" for m in micro)
    return f"non-finite gradient (norm {float(grad_norm)}) at step {step} ({where})"
