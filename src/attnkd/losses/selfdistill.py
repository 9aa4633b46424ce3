"""Self-distillation losses: ground-truth mixing and multi-exit distillation.

- Ground-truth mixing (Borup & Andersen 2021, "Even your Teacher Needs Guidance: Ground-Truth
  Targets Dampen Regularization Imposed by Self-Distillation"): the student learns the target
  ``ξ·y + (1−ξ)·p_T`` (``y`` one-hot, ``p_T`` the teacher's tempered probabilities) by soft
  cross-entropy. ξ = 1 is training from labels only; ξ = 0 is pure soft-label distillation.
- Multi-exit self-distillation (Zhang et al. 2019, "Be Your Own Teacher"): exit heads (pool +
  linear) read intermediate stages; each exit is trained towards the model's own final exit
  (its detached tempered probabilities) and, optionally, the labels. The final exit receives no
  gradient from the exits' distillation: the deeper output teaches, the shallower one learns.

Used by the ``mixed_kd`` and ``exit_kd`` terms and the teacher strategies (:mod:`attnkd.teachers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkd.losses.logits import hinton_kd

__all__ = [
    "ExitHead",
    "ExitLoss",
    "MixedKD",
    "exit_kd",
    "mixed_kd",
    "mixed_targets",
    "soft_cross_entropy",
]


def mixed_targets(
    teacher_logits: Tensor, labels: Tensor, gt_weight: float, temperature: float = 1.0
) -> Tensor:
    """``ξ·onehot(y) + (1−ξ)·softmax(z_T / τ)``.

    Shapes: ``teacher_logits`` (B, classes), ``labels`` (B,) int; returns (B, classes) float32,
    rows summing to 1. The teacher logits are detached (a target).
    """
    if not 0.0 <= gt_weight <= 1.0:
        raise ValueError(f"gt_weight (ξ) must be in [0, 1], got {gt_weight}")
    if teacher_logits.dim() != 2 or labels.shape != teacher_logits.shape[:1]:
        raise ValueError(
            f"expected teacher logits (B, classes) and labels (B,), got "
            f"{tuple(teacher_logits.shape)} and {tuple(labels.shape)}"
        )
    p_t = torch.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    y = F.one_hot(labels.long(), p_t.shape[-1]).to(p_t.dtype)
    return gt_weight * y + (1.0 - gt_weight) * p_t


def soft_cross_entropy(student_logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """``mean_b −Σ_c q_bc log softmax(z_S / τ)_bc``; shapes (B, classes) both. Its gradient with
    respect to ``z_S`` is ``(softmax(z_S / τ) − q) / (τ·B)``."""
    logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(targets * logp).sum(-1).mean()


@dataclass
class MixedKD:
    """``loss`` to backpropagate (soft CE at τ, times τ²) and the ``target`` it was taken on."""

    loss: Tensor
    target: Tensor


def mixed_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    gt_weight: float,
    temperature: float = 1.0,
) -> MixedKD:
    """Self-distillation loss ``τ²·CE(ξ·y + (1−ξ)·softmax(z_T/τ), softmax(z_S/τ))``.

    The label part of the target is taken as it is (not softened by τ); τ² keeps the gradient
    scale comparable across temperatures, as in Hinton KD.
    """
    target = mixed_targets(teacher_logits, labels, gt_weight, temperature)
    loss = soft_cross_entropy(student_logits, target, temperature) * temperature**2
    return MixedKD(loss=loss, target=target)


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
