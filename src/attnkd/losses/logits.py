"""Output (logit) distillation: Hinton KD and token-level divergences for LLM distillation.

Conventions: logits are normalised over the LAST dimension (classes / vocabulary); ``mask`` is
(batch, seq) bool with True = real token; the mean runs over real tokens only and a batch with no
real token gives 0 (never NaN); masked tokens never contribute, even if they hold NaN/inf. The
teacher is a target: it is detached and receives no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._mask import check_mask
from ._vocab_chunked import (
    chunked_token_divergence,
    compute_dtype,
    resolve_kind,
    token_divergence_from_hidden,
)

__all__ = ["KDLoss", "hinton_kd", "token_divergence", "token_divergence_from_hidden"]

IGNORE_INDEX = -100
AUTO_CHUNK_MIN = 1 << 22
"""``impl='auto'`` uses the chunked form when (real tokens) x vocab reaches this many logits."""


@dataclass
class KDLoss:
    """Hinton KD result: ``total`` to backpropagate, its ``kd`` part (already scaled by τ²) and
    the hard-label ``ce`` part (None when no labels were given)."""

    total: Tensor
    kd: Tensor
    ce: Tensor | None


def _as_tokens(
    student: Tensor, teacher: Tensor, mask: Tensor | None, labels: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """View (batch, classes) inputs as one sequence of tokens (1, batch, classes)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student.shape)} vs "
            f"{tuple(teacher.shape)}"
        )
    if student.dim() == 2:
        unsq = lambda t: None if t is None else t.unsqueeze(0)  # noqa: E731
        return student.unsqueeze(0), teacher.unsqueeze(0), unsq(mask), unsq(labels)
    if student.dim() != 3:
        raise ValueError(
            f"logits must be (batch, classes) or (batch, seq, vocab), got {student.dim()}-D"
        )
    return student, teacher, mask, labels


def hinton_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 2.0,
    mask: Tensor | None = None,
    impl: str = "auto",
) -> KDLoss:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    ``total = α·τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)) + (1−α)·CE(z_S, y)``.

    Shapes: logits (batch, classes) or (batch, seq, vocab), normalised over the last dim; labels
    (batch,) or (batch, seq) with ``-100`` = ignore; mask (batch,) or (batch, seq), True = real.
    The τ² factor is applied always (not only when labels are given). KD is averaged over real
    tokens, CE over real tokens whose label is not -100. Without labels, ``total = kd`` and
    ``alpha`` is ignored (pure soft-label distillation).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    zs, zt, m, y = _as_tokens(student_logits, teacher_logits, mask, labels)
    m = check_mask(m, zs.shape[0], zs.shape[1])
    kd = token_divergence(zs, zt, kind="fkl", temperature=temperature, mask=m, impl=impl)
    if y is None:
        return KDLoss(total=kd, kd=kd, ce=None)
    if y.shape != zs.shape[:2]:
        raise ValueError(
            f"labels must be {tuple(student_logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    keep = y != IGNORE_INDEX
    if m is not None:
        keep = keep & m
    rows = zs[keep]  # select first: ignored rows may hold NaN/inf
    ce = F.cross_entropy(rows.to(compute_dtype(rows.dtype)), y[keep], reduction="sum")
    ce = ce / max(rows.shape[0], 1)
    return KDLoss(total=alpha * kd + (1.0 - alpha) * ce, kd=kd, ce=ce)


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    kind: str = "fkl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    impl: str = "auto",
    top_k: int | None = None,
    chunk_size: int | None = None,
    overwrite_teacher: bool = False,
) -> Tensor:
    """Token-level divergence between teacher and student next-token distributions.

    Shapes: logits (batch, seq, vocab), mask (batch, seq) bool (True = real). Returns the mean
    over real tokens of the per-token divergence (float32 scalar; float64 for float64 inputs).

    kind: ``fkl`` KL(p_T‖p_S); ``rkl`` KL(p_S‖p_T); ``jsd`` generalized JSD(β) =
    β·KL(p_T‖m) + (1−β)·KL(p_S‖m) with m = β·p_T + (1−β)·p_S, where β = 0 means forward KL and
    β = 1 reverse KL (TRL's GKD convention; the mixture formula alone gives 0 there); ``tvd``
    ½·Σ|p_T − p_S| (DistillSpec: 1 − TVD is the speculative acceptance rate). Papers: GKD
    (Agarwal et al. 2024), DistillSpec (Zhou et al. 2024).

    temperature: both logits are divided by τ and the result is multiplied by τ² (for every
    kind, including TVD). top_k: keep only the teacher's k most likely tokens per position and
    renormalise both models over those k tokens before the divergence (biased: the teacher's
    mass outside its top k is dropped rather than kept as a leftover bucket or sampled).
    impl: ``naive`` (autograd through full log-softmaxes), ``chunked`` (exact, tokens in
    chunks of ``chunk_size``, gradient formed in the forward pass, about one logits-sized
    buffer of extra memory) or ``auto`` (chunked from ``AUTO_CHUNK_MIN`` tokens x vocab).
    Gradients flow to the student logits only. The chunked form supports one backward pass.

    overwrite_teacher: let the chunked form write the student-logit gradient into the teacher
    logits' memory, chunk by chunk as each chunk is consumed, so it needs no gradient buffer
    of its own (peak extra memory: a few chunk slabs). The teacher logits hold garbage
    afterwards (their version counter is bumped, so autograd catches any later use it
    knows of). Needs teacher logits of the student's shape and dtype, contiguous, not
    reduced by ``top_k``; otherwise (and with ``impl="naive"``) a fresh buffer is used.
    """
    kind = resolve_kind(kind, beta, temperature, top_k)
    if impl not in ("auto", "naive", "chunked"):
        raise ValueError(f"impl must be 'auto', 'naive' or 'chunked', got {impl!r}")
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "logits must both be (batch, seq, vocab) of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    batch, seq, _ = student_logits.shape
    mask = check_mask(mask, batch, seq)
    if mask is not None and bool(mask.all()):
        mask = None
    teacher_logits = teacher_logits.detach()
    reuse = overwrite_teacher
    if top_k is not None and top_k < student_logits.shape[-1]:
        reuse = False  # the gathered copies are the loss's own
        idx = teacher_logits.topk(top_k, dim=-1).indices
        student_logits = student_logits.gather(-1, idx)
        teacher_logits = teacher_logits.gather(-1, idx)
    if impl == "auto":
        n = batch * seq if mask is None else int(mask.sum())
        impl = "chunked" if n * student_logits.shape[-1] >= AUTO_CHUNK_MIN else "naive"
    if impl == "chunked":
        return chunked_token_divergence(
            student_logits, teacher_logits, kind, beta, temperature, mask, chunk_size, reuse
        )
    return _naive_token_divergence(student_logits, teacher_logits, kind, beta, temperature, mask)


def _naive_token_divergence(
    zs: Tensor, zt: Tensor, kind: str, beta: float, tau: float, mask: Tensor | None
) -> Tensor:
    """Reference form: full log-softmaxes of both models, autograd for the gradient."""
    vocab = zs.shape[-1]
    if mask is None:
        zs, zt = zs.reshape(-1, vocab), zt.reshape(-1, vocab)
    else:
        zs, zt = zs[mask], zt[mask]  # drop padded tokens before any arithmetic (NaN-safe)
    n = zs.shape[0]
    cd = compute_dtype(zs.dtype)
    if tau != 1.0:
        zs, zt = zs.to(cd) / tau, zt.to(cd) / tau
    ls = F.log_softmax(zs, dim=-1, dtype=cd)
    # A teacher logit of -inf is a token of probability 0: clamp so 0·log 0 reads as 0.
    lt = F.log_softmax(zt, dim=-1, dtype=cd).clamp_(min=torch.finfo(cd).min)
    if kind == "fkl":
        per = (lt.exp() * (lt - ls)).sum(-1)
    elif kind == "rkl":
        per = (ls.exp() * (ls - lt)).sum(-1)
    elif kind == "jsd":
        lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
        per = beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    else:  # tvd
        per = 0.5 * (lt.exp() - ls.exp()).abs().sum(-1)
    return per.sum() * (tau * tau / max(n, 1))
