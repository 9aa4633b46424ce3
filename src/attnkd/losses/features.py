"""Hidden-state / feature distillation losses and linear CKA.

FitNets (Romero et al. 2015) hidden MSE through a learned projector, TinyBERT (Jiao et al. 2020)
hidden and embedding MSE, DistilBERT (Sanh et al. 2019) cosine on hidden states, mean-pooled
sentence-embedding matching for sentence encoders, and linear CKA (Kornblith et al. 2019).

Inputs are (batch, seq, width) with a (batch, seq) bool mask (True = real token). Means run over
real tokens only; masked tokens never contribute, even when they hold NaN/inf; nothing real gives
0. The teacher is a target: it is detached. Widths must match: apply a ``Projector`` to the
student first when they differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._mask import check_mask

__all__ = [
    "Projector",
    "hidden_mse",
    "hidden_cosine",
    "embedding_mse",
    "sentence_embedding_mse",
    "sentence_embedding_cosine",
    "linear_cka",
    "mean_pool",
]


class Projector(nn.Module):
    """Linear map student width -> teacher width (FitNets regressor, TinyBERT ``W_h``/``W_e``).

    Identity-initialised (with zero bias) when the widths match, so training starts from the
    unprojected loss; otherwise PyTorch's default ``nn.Linear`` initialisation.
    """

    def __init__(self, student_width: int, teacher_width: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(student_width, teacher_width, bias=bias)
        if student_width == teacher_width:
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(teacher_width))
                if bias:
                    self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(..., student_width) -> (..., teacher_width)."""
        return self.linear(x)


def _real_tokens(student: Tensor, teacher: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """(n_real, width) rows of both models, teacher detached; checks shapes."""
    if student.dim() != 3 or student.shape != teacher.shape:
        raise ValueError(
            "student and teacher features must both be (batch, seq, width) of one shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}; project the student first "
            "(attnkd.losses.features.Projector) when widths differ"
        )
    mask = check_mask(mask, student.shape[0], student.shape[1])
    teacher = teacher.detach()
    if mask is None:
        return student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    return student[mask], teacher[mask]


def hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over real tokens and width (FitNets, TinyBERT ``L_hidn``).

    Shapes: (batch, seq, width) each, mask (batch, seq). Returns a scalar.
    """
    s, t = _real_tokens(student, teacher, mask)
    if s.numel() == 0:
        return s.sum()
    return F.mse_loss(s, t)


def embedding_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """TinyBERT embedding-layer loss ``MSE(E_S W_e, E_T)``: same reduction as ``hidden_mse``,
    applied to (projected) embedding-layer outputs (batch, seq, width)."""
    return hidden_mse(student, teacher, mask)


def hidden_cosine(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over real tokens of ``1 − cos(h_S, h_T)`` (DistilBERT cosine embedding loss).

    Shapes: (batch, seq, width) each, mask (batch, seq). A zero vector has cosine 0 (loss 1).
    """
    s, t = _real_tokens(student, teacher, mask)
    if s.shape[0] == 0:
        return s.sum()
    return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()


def mean_pool(hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """(batch, seq, width) -> (batch, width) mean over real tokens (zeros for an empty row)."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (batch, seq, width), got {tuple(hidden.shape)}")
    mask = check_mask(mask, hidden.shape[0], hidden.shape[1])
    if mask is None:
        return hidden.mean(dim=1)
    w = mask.to(hidden.dtype)[..., None]
    zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
    summed = torch.where(mask[..., None], hidden, zero).sum(1)
    return summed / w.sum(1).clamp_min(1.0)


def _pooled(student: Tensor, teacher: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Pooled (batch, width) features and the (batch,) bool of sequences with a real token."""
    if student.shape != teacher.shape or student.dim() not in (2, 3):
        raise ValueError(
            "sentence embeddings must be (batch, width) or (batch, seq, width) of one shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    teacher = teacher.detach()
    if student.dim() == 2:
        if mask is not None:
            raise ValueError("mask applies to (batch, seq, width) inputs only")
        keep = torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
        return student, teacher, keep
    keep = (
        torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
        if mask is None
        else check_mask(mask, student.shape[0], student.shape[1]).any(dim=1)
    )
    return mean_pool(student, mask)[keep], mean_pool(teacher, mask)[keep], keep


def sentence_embedding_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between mean-pooled sentence embeddings (sentence-encoder distillation).

    Shapes: token features (batch, seq, width) with mask (batch, seq), or already pooled
    (batch, width). Sequences without a real token are left out; mean over sentences and width.
    """
    s, t, _ = _pooled(student, teacher, mask)
    if s.numel() == 0:
        return s.sum()
    return F.mse_loss(s, t)


def sentence_embedding_cosine(
    student: Tensor, teacher: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Mean over sentences of ``1 − cos`` between mean-pooled embeddings (shapes as
    ``sentence_embedding_mse``)."""
    s, t, _ = _pooled(student, teacher, mask)
    if s.shape[0] == 0:
        return s.sum()
    return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()


def linear_cka(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Linear CKA (Kornblith et al. 2019): ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` on centred features.

    Shapes: x (n, d1), y (n, d2) with the same n (widths may differ), or (batch, seq, d) with a
    (batch, seq) mask selecting the real tokens as the n samples. Features are centred here
    (column means removed); computed in float64 and returned in x's dtype, in [0, 1];
    differentiable (use ``1 − linear_cka`` as a loss). Returns 0 when either side is constant.
    """
    if x.dim() == 3 and y.dim() == 3 and x.shape[:2] == y.shape[:2]:
        m = check_mask(mask, x.shape[0], x.shape[1])
        x = x.reshape(-1, x.shape[-1]) if m is None else x[m]
        y = y.reshape(-1, y.shape[-1]) if m is None else y[m]
    elif mask is not None:
        raise ValueError("mask applies to (batch, seq, d) inputs only")
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka needs (n, d1) and (n, d2) features, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    xd = x.to(torch.float64)
    yd = y.to(torch.float64)
    xd = xd - xd.mean(dim=0, keepdim=True)
    yd = yd - yd.mean(dim=0, keepdim=True)
    if xd.shape[0] < max(xd.shape[1], yd.shape[1]):  # fewer samples than features: n x n Grams
        gram_x, gram_y = xd @ xd.T, yd @ yd.T
        cross = (gram_x * gram_y).sum()
    else:  # d x d Grams: ‖YᵀX‖² = ⟨XXᵀ, YYᵀ⟩
        gram_x, gram_y = xd.T @ xd, yd.T @ yd
        cross = torch.linalg.matrix_norm(yd.T @ xd) ** 2
    denom = torch.linalg.matrix_norm(gram_x) * torch.linalg.matrix_norm(gram_y)
    # A constant side has cross = denom = 0; the clamp turns 0/0 into 0 without a host sync.
    return (cross / denom.clamp_min(torch.finfo(torch.float64).tiny)).to(x.dtype)
