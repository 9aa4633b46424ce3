"""Banded chunk-wise computation shared by window, linear and hybrid attention.

One function, :func:`banded_attention`, evaluates for every query i

    y_i = (sum_{j in W(i)} g * exp(s_ij - m_i) v_j + exp(-m_i) sum_{j in L(i)} f_ij v_j)
          / (sum_{j in W(i)} g * exp(s_ij - m_i) + exp(-m_i) sum_{j in L(i)} f_ij)

with ``s_ij = q_i.k_j / sqrt(d)``, ``f_ij = phi(q_i).phi(k_j)``, W(i) the window keys
(causal: ``0 <= i - j < w``; bidirectional: ``|i - j| < w``), L(i) every other allowed key
(causal: ``j <= i - w``) and ``m_i`` a stabiliser that cancels (:func:`stabiliser`).
Window-only attention has no L part, linear attention has no W part (``w = 0``).

Queries are cut into chunks of ``c`` rows. A chunk sees its own keys and ``p = ceil((w-1)/c)``
chunks on each allowed side (its *slab*, at most ``(2p+1) c`` keys); everything beyond the slab
is linear and enters through running sums of ``phi(k) v^T`` per chunk (prefix, and suffix when
bidirectional). No (seq x seq) tensor is built: memory and time are O(seq * slab).
GQA: q has H heads, k/v have H_kv; query head h reads key head ``h // (H / H_kv)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _chunks(x: Tensor, c: int, n: int) -> Tensor:
    """(B, K, S, D) -> (B, K, n, c, D), zero-padded at the end to n * c rows."""
    pad = n * c - x.shape[2]
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.view(*x.shape[:2], n, c, x.shape[-1])


def _slabs(x: Tensor, before: int, after: int) -> Tensor:
    """(B, K, n, c, D) -> (B, K, n, (before + 1 + after) * c, D): each chunk with neighbours."""
    b, k, n, c, d = x.shape
    padded = F.pad(x, (0, 0, 0, 0, before, after))
    parts = [padded[:, :, i : i + n] for i in range(before + 1 + after)]
    return torch.cat(parts, dim=3)


def _exclusive_cumsum(x: Tensor, dim: int, shift: int) -> Tensor:
    """sum over indices < i - shift along ``dim`` (zero where none)."""
    total = torch.cumsum(x, dim)
    n = x.shape[dim]
    keep = n - shift - 1
    if keep <= 0:
        return torch.zeros_like(x)
    pad = [0, 0] * (x.dim() - dim - 1) + [shift + 1, 0]
    return F.pad(total.narrow(dim, 0, keep), pad)


def _in_window(diff: Tensor, window: int, causal: bool) -> Tensor:
    return (diff >= 0) & (diff < window) if causal else diff.abs() < window


def stabiliser(s: Tensor, l_den: Tensor | None, log_gamma: Tensor | None) -> Tensor:
    """Row shift m >= every log-weight, so that exp(s + log gamma - m) <= 1 and
    exp(-m) * linear denominator <= 1, one of them = 1 (the normaliser stays >= 1). It
    cancels between numerator and denominator, so it carries no gradient.

    s: (..., L) window scores (-inf outside); l_den: (..., 1) linear denominator or None.
    """
    with torch.no_grad():
        m = s if log_gamma is None else s + log_gamma
        m = m.amax(-1, keepdim=True)
        if l_den is not None:
            m = torch.maximum(m, l_den.log())
        return torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))


def add_linear(
    num: Tensor, den: Tensor, l_num: Tensor, l_den: Tensor, m: Tensor
) -> tuple[Tensor, Tensor]:
    """Window sums (already times exp(-m)) plus the linear sums times exp(-m).

    Written as ``(l_num / l_den) * exp(log l_den - m)``: the weight is <= 1 (m >= log l_den),
    so no exp(-m) can overflow when every score is very negative; rows without linear keys
    (l_den = 0) add nothing. num: (..., Dv), den/l_den/m: (..., 1).
    """
    has = l_den > 0
    safe = torch.where(has, l_den, torch.ones_like(l_den))
    w = torch.where(has, torch.exp(safe.log() - m), torch.zeros_like(l_den))
    return num + l_num / safe * w, den + w


def _global_linear(fq: Tensor, fk: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """Bidirectional linear attention: one sum ``phi(k)^T v`` over all real keys, no chunks."""
    b, kv_heads, seq, dv = v.shape
    g = fq.shape[1] // kv_heads
    out_dtype, dtype = v.dtype, torch.promote_types(v.dtype, torch.float32)
    fk, v = fk.to(dtype), v.to(dtype)
    if key_mask is not None:
        m = key_mask[:, None, :, None].to(dtype)
        fk, v = fk * m, v * m
    kv = torch.einsum("bksf,bksd->bkfd", fk, v)
    z = fk.sum(2)
    fqg = fq.to(dtype).reshape(b, kv_heads, g * seq, -1)
    num = torch.matmul(fqg, kv)
    den = torch.matmul(fqg, z[..., None])
    y = num / den.clamp_min(torch.finfo(dtype).tiny)
    return y.view(b, kv_heads * g, seq, dv).to(out_dtype)


def banded_attention(
    q: Tensor | None,
    k: Tensor | None,
    v: Tensor,
    fq: Tensor | None,
    fk: Tensor | None,
    window: int,
    causal: bool,
    key_mask: Tensor | None = None,
    gamma: Tensor | None = None,
    chunk: int = 64,
) -> Tensor:
    """Window softmax part (q, k, ``window >= 1``) plus linear part (fq, fk): see module doc.

    q: (B, H, S, D), k: (B, H_kv, S, D), v: (B, H_kv, S, Dv); fq: (B, H, S, F), fk: (B, H_kv,
    S, F), non-negative. ``key_mask``: (B, S) bool, True = real key. ``gamma``: (H,) positive
    weight of the window part. Returns (B, H, S, Dv) in the dtype of v. Query rows with no
    allowed key give 0.
    """
    use_window, use_linear = q is not None and window > 0, fq is not None
    if not use_window and not use_linear:
        raise ValueError("banded_attention needs a window part, a linear part or both")
    b, kv_heads, seq, dv = v.shape
    heads = (q if q is not None else fq).shape[1]
    g = heads // kv_heads
    if not use_window and not causal:
        return _global_linear(fq, fk, v, key_mask)
    c = max(1, min(chunk, seq))
    n = math.ceil(seq / c)
    p = math.ceil((window - 1) / c) if window > 1 else 0
    before, after = p, (0 if causal else p)
    dtype = torch.promote_types(v.dtype, torch.float32)

    real = torch.ones(b, seq, dtype=torch.bool, device=v.device) if key_mask is None else key_mask
    real_c = _chunks(real[:, None, :, None].to(dtype), c, n)  # (B, 1, n, c, 1); 0 past the end
    vc = _chunks(v.to(dtype), c, n) * real_c
    v_slab = _slabs(vc, before, after)  # (B, K, n, L, Dv)
    slab_real = _slabs(real_c, before, after)[..., 0] > 0  # (B, 1, n, L)
    width = v_slab.shape[3]
    rows = torch.arange(c, device=v.device)[:, None] + before * c
    cols = torch.arange(width, device=v.device)[None, :]
    diff = rows - cols  # (c, L): i - j inside the slab
    allowed = slab_real[:, :, None, :, None, :]  # (B, 1, 1, n, 1, L)
    if causal:
        allowed = allowed & (diff >= 0)

    def grouped(x: Tensor) -> Tensor:  # (B, H, S, D) -> (B, K, G, n, c, D)
        xc = _chunks(x.to(dtype), c, n)
        return xc.view(b, kv_heads, g, n, c, x.shape[-1])

    l_num = l_den = None
    if use_linear:
        lin = allowed & ~_in_window(diff, window, causal) if use_window else allowed
        fqg = grouped(fq)
        fkc = _chunks(fk.to(dtype), c, n) * real_c
        f = torch.einsum("bkgncf,bknlf->bkgncl", fqg, _slabs(fkc, before, after))
        f = f * lin
        l_num = torch.einsum("bkgncl,bknld->bkgncd", f, v_slab)
        l_den = f.sum(-1, keepdim=True)
        kv_chunk = torch.einsum("bkncf,bkncd->bknfd", fkc, vc)  # (B, K, n, F, Dv)
        z_chunk = fkc.sum(3)  # (B, K, n, F)
        outside = [(_exclusive_cumsum(kv_chunk, 2, before), _exclusive_cumsum(z_chunk, 2, before))]
        if not causal:
            flip = [torch.flip(kv_chunk, (2,)), torch.flip(z_chunk, (2,))]
            outside.append(
                (
                    torch.flip(_exclusive_cumsum(flip[0], 2, after), (2,)),
                    torch.flip(_exclusive_cumsum(flip[1], 2, after), (2,)),
                )
            )
        for kv_out, z_out in outside:
            l_num = l_num + torch.einsum("bkgncf,bknfd->bkgncd", fqg, kv_out)
            l_den = l_den + torch.einsum("bkgncf,bknf->bkgnc", fqg, z_out)[..., None]
    if not use_window:
        num, den = l_num, l_den
    else:
        win = allowed & _in_window(diff, window, causal)
        k_slab = _slabs(_chunks(k.to(dtype), c, n), before, after)
        s = torch.einsum("bkgncd,bknld->bkgncl", grouped(q), k_slab) * q.shape[-1] ** -0.5
        s = s.masked_fill(~win, float("-inf"))
        log_g = None if gamma is None else gamma.to(dtype).log().view(1, kv_heads, g, 1, 1, 1)
        m = stabiliser(s, l_den, log_g)
        if log_g is not None:
            s = s + log_g
        e = torch.exp(s - m)  # 0 outside the window
        num = torch.einsum("bkgncl,bknld->bkgncd", e, v_slab)
        den = e.sum(-1, keepdim=True)
        if use_linear:
            num, den = add_linear(num, den, l_num, l_den, m)
    y = num / den.clamp_min(torch.finfo(dtype).tiny)
    y = y.reshape(b, heads, n * c, dv)[:, :, :seq]
    return y.to(v.dtype)
