"""Ground-truth mixing for self-distillation (Borup & Andersen 2021, "Even your Teacher Needs
Guidance: Ground-Truth Targets Dampen Regularization Imposed by Self-Distillation").

The student learns the target ``ξ·y + (1−ξ)·p_T`` (``y`` one-hot, ``p_T`` the teacher's tempered
probabilities) by soft cross-entropy. ξ = 1 is training from labels only; ξ = 0 is pure
soft-label distillation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MixedKD", "mixed_kd", "mixed_targets", "soft_cross_entropy"]


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
