"""Naive forms of the attention and relation losses: full (B, H, S, S) matrices, plain autograd.

These are the readable reference the chunked forms are tested against (and the faster choice
for short sequences). Inputs arrive prepared by :mod:`attnkd.losses.attention`: validated,
padded positions zeroed, one floating dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnkd.losses._mask import allowed_keys, masked_mean


def scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``scale * q k^T`` per head: q (B, H, S, D), k (B, Hkv, S, D) with H % Hkv == 0 (GQA).

    Each group of H/Hkv query heads shares one key head (head h uses key head h // g); the
    keys are broadcast through a reshape of q, never copied per head.
    """
    b, h, s, d = q.shape
    hkv = k.shape[1]
    out = torch.matmul(q.reshape(b, hkv, (h // hkv) * s, d), k.transpose(-1, -2))
    return (out * scale).view(b, h, s, k.shape[2])


def probs_times(p: Tensor, v: Tensor) -> Tensor:
    """``p v`` per head with GQA: p (B, H, S, S), v (B, Hkv, S, Dv) -> (B, H, S, Dv)."""
    b, h, s, n = p.shape
    hkv = v.shape[1]
    return torch.matmul(p.reshape(b, hkv, (h // hkv) * s, n), v).view(b, h, s, v.shape[-1])


def _allowed(mask: Tensor | None, seq: int, causal: bool, like: Tensor) -> Tensor | None:
    return allowed_keys(mask, seq, causal, like.device)


def _log_probs(x: Tensor, allowed: Tensor | None) -> Tensor:
    if allowed is not None:  # finite fill: a fully masked (padded) row stays finite
        x = x.masked_fill(~allowed, torch.finfo(x.dtype).min)
    return torch.log_softmax(x, dim=-1)


def divergence(
    a: Tensor, b: Tensor, mask: Tensor | None, causal: bool, mode: str = "kl", reverse: bool = False
) -> Tensor:
    """Mean over real rows of KL(softmax a || softmax b) (``reverse``: KL(b || a)) or of the
    cross-entropy ``-sum softmax(a) log softmax(b)`` (``mode="ce"``). a, b: (B, H, S, S) scores."""
    allowed = _allowed(mask, a.shape[-1], causal, a)
    lp, lq = _log_probs(a, allowed), _log_probs(b, allowed)
    if reverse:
        lp, lq = lq, lp
    terms = lp.exp() * (lp - lq) if mode == "kl" else -lp.exp() * lq
    if allowed is not None:
        terms = torch.where(allowed, terms, torch.zeros((), dtype=terms.dtype, device=a.device))
    return masked_mean(terms.sum(-1), mask)


def linear_ce(a: Tensor, u: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """Mean over real rows of ``-sum_j softmax(a)_ij log(u_ij / sum_j u_ij)``, u >= 0 (linear
    attention weights before normalisation). Values below the dtype's ``tiny`` are clamped."""
    allowed = _allowed(mask, a.shape[-1], causal, a)
    p = _log_probs(a, allowed).exp()
    tiny = torch.finfo(u.dtype).tiny
    if allowed is not None:
        u = torch.where(allowed, u, torch.zeros((), dtype=u.dtype, device=u.device))
    z = u.sum(-1, keepdim=True).clamp_min(tiny)
    terms = -p * (u.clamp_min(tiny).log() - z.log())
    if allowed is not None:
        terms = torch.where(allowed, terms, torch.zeros((), dtype=terms.dtype, device=a.device))
    return masked_mean(terms.sum(-1), mask)


def score_mse(a: Tensor, b: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """Mean of ``(a - b)^2`` over heads and allowed (query, key) pairs, both tokens real."""
    sq = (a - b).square()
    allowed = _allowed(mask, a.shape[-1], causal, a)
    if mask is not None:
        allowed = allowed & mask[:, None, :, None]
    if allowed is None:
        return sq.mean()
    allowed = allowed.expand_as(sq)
    zero = torch.zeros((), dtype=sq.dtype, device=sq.device)
    return torch.where(allowed, sq, zero).sum() / allowed.sum().clamp_min(1)


def output_mse(
    a: Tensor, va: Tensor, b: Tensor, vb: Tensor, mask: Tensor | None, causal: bool
) -> Tensor:
    """Mean over real rows, heads and features of ``(softmax(a) va - softmax(b) vb)^2``."""
    allowed = _allowed(mask, a.shape[-1], causal, a)
    oa = probs_times(_log_probs(a, allowed).exp(), va)
    ob = probs_times(_log_probs(b, allowed).exp(), vb)
    return masked_mean((oa - ob).square().mean(-1), mask)
