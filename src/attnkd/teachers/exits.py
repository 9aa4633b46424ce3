"""Multi-exit self-distillation inside one model (Zhang et al. 2019, "Be Your Own Teacher").

Exit heads (pool + linear) read intermediate stages of the student; each exit is trained towards
the model's own final exit (its detached tempered probabilities) and, optionally, the labels.
The final exit receives no gradient from the exits' distillation: the deeper output teaches,
the shallower one learns. The exits are training-time modules; the exported model is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from attnkd.losses.logits import hinton_kd

__all__ = ["ExitHead", "ExitLoss", "exit_kd"]


class ExitHead(nn.Module):
    """Pool a stage's features and map them to class logits.

    ``forward(x)``: (B, C, H, W) feature maps (mean over H, W) or (B, N, D) tokens (mean over N)
    or (B, D) -> (B, classes).
    """

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.mean(dim=(2, 3))
        elif x.dim() == 3:
            x = x.mean(dim=1)
        return self.fc(self.norm(x))


@dataclass
class ExitLoss:
    """``total = kd + ce_weight·ce`` for one exit; ``kd`` is already scaled by τ²."""

    total: Tensor
    kd: Tensor
    ce: Tensor


def exit_kd(
    exit_logits: Tensor,
    final_logits: Tensor,
    labels: Tensor,
    temperature: float = 3.0,
    ce_weight: float = 1.0,
) -> ExitLoss:
    """``τ²·KL(softmax(z_final/τ) ‖ softmax(z_exit/τ)) + ce_weight·CE(z_exit, y)``.

    Shapes: logits (B, classes), labels (B,). ``final_logits`` is detached here (the teacher of
    the exit is the same model's last exit).
    """
    kd = hinton_kd(exit_logits, final_logits.detach(), temperature=temperature).kd
    ce = F.cross_entropy(exit_logits.float(), labels)
    return ExitLoss(total=kd + ce_weight * ce, kd=kd, ce=ce)
