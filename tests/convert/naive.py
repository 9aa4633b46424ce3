"""Naive quadratic definitions of the converted attentions (independent of attnkd.convert)."""

from __future__ import annotations

import torch


def expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def naive_mix(q, k, v, fq, fk, window, causal, key_mask=None, gamma=None):
    """Full (S x S) weights: gamma*exp(s) on window keys, phi.phi on the others, one normaliser.

    Computed in float64 without any max-shift (inputs are small)."""
    h = (q if q is not None else fq).shape[1]
    s_len = v.shape[2]
    i = torch.arange(s_len)[:, None]
    j = torch.arange(s_len)[None, :]
    diff = i - j
    allowed = torch.ones(s_len, s_len, dtype=torch.bool)
    if causal:
        allowed = diff >= 0
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    in_win = (diff.abs() < window) if not causal else (diff >= 0) & (diff < window)
    w = torch.zeros(v.shape[0], h, s_len, s_len, dtype=torch.float64)
    if q is not None and window > 0:
        kk = expand_kv(k, h).double()
        s = q.double() @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5
        e = s.exp()
        if gamma is not None:
            e = e * gamma.double()[None, :, None, None]
        w = w + torch.where(allowed & in_win, e, 0.0)
        lin_allowed = allowed & ~in_win
    else:
        lin_allowed = allowed
    if fq is not None:
        f = fq.double() @ expand_kv(fk, h).double().transpose(-1, -2)
        w = w + torch.where(lin_allowed, f, 0.0)
    y = w @ expand_kv(v, h).double() / w.sum(-1, keepdim=True)
    return y
