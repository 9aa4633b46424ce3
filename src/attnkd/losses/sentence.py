"""Sentence-level relation loss: match the cosine-similarity matrix of a batch of sentences.

Needs no projection (only ``batch x batch`` similarities are compared), so teacher and student
may differ in width and in tokenizer; several teachers' matrices average into one ensemble
target (mean of targets, as in MEAL V2 for soft labels). Related: similarity-preserving KD
(Tung & Mori, 2019), here on L2-normalised sentence embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_similarity_matrix(emb: Tensor, eps: float = 1e-8) -> Tensor:
    """(batch, width) sentence embeddings -> (batch, batch) pairwise cosine similarities."""
    if emb.dim() != 2:
        raise ValueError(f"embeddings must be (batch, width), got {tuple(emb.shape)}")
    unit = emb / emb.norm(dim=-1, keepdim=True).clamp_min(eps)
    return unit @ unit.T


def ensemble_similarity(
    teachers: Sequence[Tensor], weights: Sequence[float] | None = None
) -> Tensor:
    """Weighted mean of the teachers' (batch, batch) similarity matrices, each from its own
    (batch, width_i) embeddings. ``weights`` default to equal; they need not sum to 1."""
    if not teachers:
        raise ValueError("ensemble_similarity needs at least one teacher")
    w = [1.0] * len(teachers) if weights is None else [float(x) for x in weights]
    if len(w) != len(teachers) or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"need one weight >= 0 per teacher with a positive sum, got {w}")
    total = sum(wi * cosine_similarity_matrix(t.detach().float()) for wi, t in zip(w, teachers))
    return total / sum(w)


def similarity_matrix_mse(student: Tensor, target: Tensor) -> Tensor:
    """Mean squared difference between the student's cosine-similarity matrix and ``target``
    over the off-diagonal pairs (the diagonal is 1 for both).

    Shapes: student (batch, width) embeddings; target (batch, batch) similarities (e.g.
    :func:`ensemble_similarity` of the teachers). A batch of one sentence has no pair: 0.
    """
    n = student.shape[0]
    if target.shape != (n, n):
        raise ValueError(f"target must be ({n}, {n}), got {tuple(target.shape)}")
    if n < 2:
        return student.sum() * 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    s = cosine_similarity_matrix(student)
    return F.mse_loss(s[off], target.detach().to(s.dtype)[off])


RANK_SCALE = 20.0
"""CoSENT's scale λ (Su, 2022): the default of :func:`similarity_rank_loss`."""


def similarity_rank_loss(student: Tensor, target: Tensor, scale: float = RANK_SCALE) -> Tensor:
    """Ranking loss of similarities (CoSENT, with the teacher's similarities as the order):
    ``log(1 + sum over (i, j) with target_i > target_j of exp(scale * (student_j - student_i)))``.

    Shapes: student (n,) cosine similarities of n sentence pairs; target (n,) the teacher's
    similarities of the same pairs. Only the order of ``target`` counts (any increasing map of it
    gives the same loss) and ties add nothing, so the student is taught which pairs are more
    similar, not the teacher's scale. It tends to 0 as the student orders every pair like the
    teacher with growing margins; with fewer than two distinct targets it is 0.
    """
    if student.dim() != 1 or target.shape != student.shape:
        raise ValueError(f"need two (n,) vectors, got {tuple(student.shape)} and "
                         f"{tuple(target.shape)}")  # fmt: skip
    dtype = torch.promote_types(student.dtype, torch.float32)  # float32 at least, float64 kept
    s, t = student.to(dtype), target.detach().to(student.device, dtype)
    gaps = scale * (s[None, :] - s[:, None])  # [i, j] = scale * (s_j - s_i)
    gaps = gaps.masked_fill(~(t[:, None] > t[None, :]), float("-inf"))
    return torch.logsumexp(torch.cat([s.new_zeros(1), gaps.flatten()]), dim=0)


def mix_gold(teacher: Tensor, gold: Tensor, gt_weight: float) -> Tensor:
    """Ground-truth mixing of a pair target: ``gt_weight * gold + (1 - gt_weight) * teacher``
    where the pair has a gold similarity, the teacher's value where ``gold`` is NaN.

    Shapes: teacher (n,) and gold (n,), both similarities in [0, 1] for STS (gold = score / 5);
    ``gt_weight`` in [0, 1]: 0 is the teacher alone, 1 the labels alone."""
    if not 0.0 <= gt_weight <= 1.0:
        raise ValueError(f"gt_weight must be in [0, 1], got {gt_weight}")
    if teacher.shape != gold.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and gold {tuple(gold.shape)} differ")
    gold = gold.to(teacher.device, teacher.dtype)
    mixed = gt_weight * gold + (1.0 - gt_weight) * teacher
    return torch.where(torch.isnan(gold), teacher, mixed)


def pair_similarities(emb: Tensor, pairs: Tensor) -> Tensor:
    """Cosine similarity of each pair of rows: emb (batch, width), pairs (n, 2) row indices
    -> (n,)."""
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (n, 2) row indices, got {tuple(pairs.shape)}")
    return F.cosine_similarity(emb[pairs[:, 0]], emb[pairs[:, 1]], dim=-1, eps=1e-8)
