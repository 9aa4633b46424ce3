"""Token-level KD against a top-k teacher: the teacher's k most likely tokens plus one tail bucket.

An offline teacher cache (:mod:`attnkd.data.teacher_cache`) keeps, per token, the teacher's
top-k token ids ``S``, their log-probabilities ``log p_T(i)`` (i in S) and the log of the
remaining mass ``log t_T = log(1 - sum_{i in S} p_T(i))``. The loss compares two
distributions over the same k + 1 outcomes ("token i" for each i in S, and "some token outside
S"):

- teacher: ``P = (p_T(i) for i in S, t_T)``, renormalised to sum to 1 (a no-op up to rounding;
  it absorbs the rounding of half-precision caches);
- student: ``Q = (q(i) for i in S, t_S)`` with ``q = softmax(z_S / τ)`` over the whole vocabulary
  and ``t_S = sum_{j not in S} q(j)``: the student's own mass outside the teacher's top k.

The divergence (``fkl`` KL(P‖Q), ``rkl`` KL(Q‖P), ``jsd`` generalized JSD(β), ``tvd``) is the
same formula as :func:`attnkd.losses.token_divergence`, applied to these (k + 1)-bucket
distributions, times τ². Nothing is dropped and nothing is renormalised away: the student is
pushed to put exactly the teacher's tail mass outside S, but is free to spread it over those
tokens as it likes (the cache does not know how the teacher spreads it). At k = vocabulary size
the tail buckets are empty and the loss equals the full-vocabulary divergence exactly. For
k < V it is a lower bound of the full-vocabulary divergence (merging outcomes never increases
KL, JSD or TVD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._mask import check_mask
from ._vocab_chunked import compute_dtype, resolve_kind

__all__ = ["TopKTargets", "topk_divergence"]


@dataclass
class TopKTargets:
    """A top-k teacher's targets for a batch: ``ids`` (batch, seq, k) int, ``logp`` (batch,
    seq, k) log-probs at the cache's temperature, ``tail`` (batch, seq) log of the rest."""

    ids: Tensor
    logp: Tensor
    tail: Tensor


def topk_divergence(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_logp: Tensor,
    tail_logp: Tensor,
    kind: str = "fkl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Divergence between a cached top-k teacher (plus its tail bucket) and the student.

    Shapes: ``student_logits`` (batch, seq, vocab); ``topk_ids`` (batch, seq, k) int;
    ``topk_logp`` (batch, seq, k) teacher log-probs at temperature τ (any float dtype);
    ``tail_logp`` (batch, seq) log of the teacher mass outside the top k (``-inf`` when the top
    k hold it all); ``mask`` (batch, seq) bool, True = real token. Returns the mean over real
    tokens (float32 scalar; float64 for float64 logits), 0 when no token is real.

    The student's log-probs are ``log_softmax(z_S / τ)`` and the result is multiplied by τ², as
    in :func:`attnkd.losses.token_divergence`; the teacher's cached log-probs must already be
    at temperature τ. Gradients flow to ``student_logits`` only.
    """
    kind = resolve_kind(kind, beta, temperature)
    if student_logits.dim() != 3:
        raise ValueError(
            f"student logits must be (batch, seq, vocab), got {student_logits.dim()}-D"
        )
    batch, seq, vocab = student_logits.shape
    k = topk_ids.shape[-1]
    for name, t, shape in (
        ("topk_ids", topk_ids, (batch, seq, k)),
        ("topk_logp", topk_logp, (batch, seq, k)),
        ("tail_logp", tail_logp, (batch, seq)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape} for logits {tuple(student_logits.shape)}, "
                             f"got {tuple(t.shape)}")  # fmt: skip
    if not 1 <= k <= vocab:
        raise ValueError(f"top-k of {k} tokens does not fit a vocabulary of {vocab}")
    mask = check_mask(mask, batch, seq)
    cd = compute_dtype(student_logits.dtype)
    zs = student_logits.reshape(-1, vocab)
    ids = topk_ids.reshape(-1, k).long()
    lt = torch.cat((topk_logp.reshape(-1, k).to(cd), tail_logp.reshape(-1, 1).to(cd)), dim=-1)
    if mask is not None:  # drop padded tokens before any arithmetic (NaN-safe)
        keep = mask.reshape(-1)
        zs, ids, lt = zs[keep], ids[keep], lt[keep]
    n = zs.shape[0]
    if n == 0:
        return student_logits.sum() * 0.0
    tiny = torch.finfo(cd).min
    ls_full = torch.log_softmax(zs.to(cd) / temperature, dim=-1)
    ls_top = ls_full.gather(-1, ids)
    # the student's mass outside S: logsumexp over the vocabulary with S set to ~-inf (finite,
    # so an empty tail at k = V gives a finite value whose probability underflows to 0)
    ls_tail = ls_full.scatter(-1, ids, tiny).logsumexp(-1, keepdim=True)
    ls = torch.cat((ls_top, ls_tail), dim=-1).clamp(min=tiny)
    lt = torch.log_softmax(lt.clamp(min=tiny), dim=-1).clamp(min=tiny)
    per = _bucket_divergence(ls, lt, kind, beta)
    return per.sum() * (temperature * temperature / n)


def _bucket_divergence(ls: Tensor, lt: Tensor, kind: str, beta: float) -> Tensor:
    """Per-row divergence of (r, k + 1) log-distributions (student ``ls``, teacher ``lt``)."""
    if kind == "fkl":
        return (lt.exp() * (lt - ls)).sum(-1)
    if kind == "rkl":
        return (ls.exp() * (ls - lt)).sum(-1)
    if kind == "jsd":
        lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
        return beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    return 0.5 * (lt.exp() - ls.exp()).abs().sum(-1)
