"""Losses used by the sequence-classification recipes beyond CE and Hinton KD.

- :func:`attention_entropy`: AEM / entropy-guided attention regulariser (METHODS.md section 2):
  the mean Shannon entropy of each head's attention rows, so a term can maximise it
  (``-λ·H(A)``).
- :func:`ofa_target_loss`: OFA-KD's target-enhanced distillation loss (Hao et al. 2023, "One-for-
  All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation").
- :func:`hard_negative_contrastive`: contrastive embedding distillation with negatives mined by
  the teacher (the hard-negative part of Dynamic Contrastive Distillation, Rao et al. 2023).
- :func:`masked_token_mse`: DMAE-style feature distillation on a masked input (Bai et al. 2023,
  "Masked Autoencoders Enable Efficient Knowledge Distillers"), at the masked or the visible
  positions.

All are pure functions of tensors; shapes are in the docstrings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkd.losses.features import hidden_mse
from attnkd.losses.logits import IGNORE_INDEX

__all__ = ["attention_entropy", "hard_negative_contrastive", "masked_token_mse", "ofa_target_loss"]

POSITIONS = ("masked", "visible")
"""Where :func:`masked_token_mse` compares features."""


def attention_entropy(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean entropy (nats) of each head's attention rows ``softmax(q kᵀ/√d)``.

    Shapes: q, k (batch, heads, seq, head_dim); mask (batch, seq) bool, True = real token
    (padded keys get no attention; padded query rows are left out of the mean). Returns
    (batch, heads). A uniform row over n real keys has entropy log n. Builds the (seq × seq)
    matrices: meant for the short sequences of classification batches.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        keys = mask[:, None, None, :]
        scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
    logp = torch.log_softmax(scores.float(), dim=-1)
    ent = -(logp.exp() * logp)
    if mask is not None:
        ent = ent.masked_fill(~mask[:, None, None, :], 0.0)
    rows = ent.sum(-1)  # (batch, heads, seq)
    if mask is None:
        return rows.mean(-1)
    m = mask[:, None, :].to(rows.dtype)
    return (rows * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def ofa_target_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    eps: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """OFA-KD's target-enhanced loss, ``mean_rows -Σ_c w_c log p_S(c)``, as its code computes it.

    With teacher probabilities ``p_T`` (at ``temperature``) and the one-hot true class ``y``:
    ``w = (p_T + y)^eps - y``: the true class gets ``(1 + p_T(t))^eps - 1`` and every other class
    ``p_T(c)^eps``. ``eps = 1`` is plain soft cross-entropy with the teacher; ``eps > 1`` raises
    the true class's weight relative to the rest ("target enhancement"). The paper writes the
    true-class weight as ``(1 + p_T(t))^eps``; the authors' code (followed here) subtracts 1, so
    ``eps = 1`` reduces to ordinary KD. Rows labelled -100 use ``w = p_T^eps`` (no target).

    Shapes: logits (batch, classes); labels (batch,).
    """
    pt = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    known = labels != IGNORE_INDEX
    y = torch.zeros_like(pt)
    y[known] = F.one_hot(labels[known], pt.shape[-1]).to(pt.dtype)
    w = (pt + y).pow(eps) - y
    return -(w * log_ps).sum(-1).mean()


def hard_negative_contrastive(
    student: Tensor, teacher: Tensor, negatives: int = 4, temperature: float = 0.05
) -> Tensor:
    """InfoNCE from each student embedding to its own teacher embedding against hard negatives.

    Shapes: student, teacher (batch, width) (same width; project first if they differ). Both
    are L2-normalised. For row i the negatives are the ``negatives`` other rows j whose *teacher*
    embeddings are most similar to teacher row i (mined by the teacher, not the student), and
    ``loss_i = -log softmax([ŝ_i·t̂_i, ŝ_i·t̂_j1, ...] / temperature)[0]``; mean over rows.
    ``negatives`` is capped at batch - 1. The paper's dynamic per-sample weighting is not
    applied: every row counts equally.
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher must be (batch, width) alike, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    b = student.shape[0]
    n = min(negatives, b - 1)
    s_hat = F.normalize(student.float(), dim=-1)
    t_hat = F.normalize(teacher.detach().float(), dim=-1)
    sim = s_hat @ t_hat.T  # (batch, batch): student row i against every teacher row
    pos = sim.diagonal()[:, None]
    if n <= 0:
        return torch.zeros((), device=student.device) * sim.sum()
    t_sim = t_hat @ t_hat.T
    t_sim.fill_diagonal_(float("-inf"))
    hard = t_sim.topk(n, dim=-1).indices  # (batch, n) teacher-mined negatives
    logits = torch.cat([pos, sim.gather(1, hard)], dim=1) / temperature
    return -torch.log_softmax(logits, dim=-1)[:, 0].mean()


def masked_token_mse(
    student: Tensor,
    teacher: Tensor,
    attention_mask: Tensor,
    masked: Tensor,
    positions: str = "masked",
) -> Tensor:
    """MSE between student features of a masked input and teacher features of the whole input.

    The student saw the row with the tokens in ``masked`` replaced by the mask token; the teacher
    saw it whole. ``positions="masked"``: only the masked positions count, so the student (through
    its projector) reconstructs the teacher's features of tokens it could not see;
    ``"visible"``: only the tokens the student saw count (the DMAE paper aligns the visible
    patches, the only ones its MAE student encodes). Mean over the chosen real tokens and the
    width; 0 (with a gradient) when there are none. The teacher is detached.

    Shapes: student, teacher (batch, seq, width) (project the student first when widths
    differ); attention_mask, masked (batch, seq) bool (True = real token / masked token).
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got '{positions}'")
    if masked.shape != attention_mask.shape:
        raise ValueError(
            f"masked {tuple(masked.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "must have one (batch, seq) shape"
        )
    keep = attention_mask.bool() & (masked.bool() if positions == "masked" else ~masked.bool())
    return hidden_mse(student, teacher, keep)
