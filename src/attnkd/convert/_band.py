"""Banded chunk-wise computation shared by window, linear and hybrid attention.

One function, :func:`banded_attention`, evaluates for every query i

    y_i = (sum_{j in W(i)} g * exp(s_ij - m_i) v_j + exp(-m_i) sum_{j in L(i)} f_ij v_j)
          / (sum_{j in W(i)} g * exp(s_ij - m_i) + exp(-m_i) sum_{j in L(i)} f_ij)

with ``s_ij = q_i.k_j / sqrt(d)``, ``f_ij = phi(q_i).phi(k_j)``, W(i) the window keys
(causal: ``0 <= i - j < w``; bidirectional: ``|i - j| < w``), L(i) every other allowed key
(causal: ``j <= i - w``) and ``m_i`` a stabiliser that cancels (:func:`stabiliser`).
Window-only attention has no L part, linear attention has no W part (``w = 0``). A *terraced*
window (``terrace=True``, causal, ``c = w``) is W(i) = every key ``j <= i`` of i's chunk and of
the chunk before; L(i) the keys of older chunks.

Queries are cut into chunks of ``c`` rows. A chunk sees its own keys and ``p = ceil((w-1)/c)``
chunks on each allowed side (its *slab*, at most ``(2p+1) c`` keys); everything beyond the slab
is linear and enters through running sums of ``phi(k) v^T`` per chunk (prefix, and suffix when
bidirectional). No (seq x seq) tensor is built: memory and time are O(seq * slab).

Layout (what makes it fast on CPU): the G query heads that share a key head (GQA) are stacked
into one block of ``G c`` rows per chunk, so every product is one batched matmul over
(batch, key head, chunk) with no copy of keys per query head; values carry an extra column of
ones so that each matmul returns numerator and denominator together; the causal linear part
inside the slab is computed only on the chunks that hold such keys (for ``c = w``: the previous
chunk); the running sums are accumulated chunk by chunk (``cumsum`` over a middle dimension is
slow on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _pad_to(x: Tensor, total: int) -> Tensor:
    """Zero-pad dimension 2 of (B, X, S, D) to ``total`` rows."""
    return F.pad(x, (0, 0, 0, total - x.shape[2])) if total > x.shape[2] else x


def _rows(x: Tensor, kv_heads: int, c: int, n: int) -> Tensor:
    """(B, H, S, D) -> (B K n, G c, D): each chunk's rows of the G heads sharing a key head."""
    b, h, _, d = x.shape
    g = h // kv_heads
    x = _pad_to(x, n * c).view(b, kv_heads, g, n, c, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b * kv_heads * n, g * c, d)


def _keys(x: Tensor, c: int, n: int) -> Tensor:
    """(B, K, S, D) -> (B K, n, c, D)."""
    b, k, _, d = x.shape
    return _pad_to(x, n * c).reshape(b * k, n, c, d)


def _slab(x: Tensor, before: int, after: int, count: int | None = None) -> Tensor:
    """(N, n, c, D) -> (N n, count c, D): each chunk with ``before`` chunks before it and
    ``after`` after it (zeros beyond the ends), oldest first; only the first ``count`` chunks
    of that run (default all ``before + 1 + after``)."""
    m, n, c, d = x.shape
    count = before + 1 + after if count is None else count
    if before == after == 0:
        return x.reshape(m * n, c, d)
    padded = F.pad(x, (0, 0, 0, 0, before, after))
    parts = [padded[:, i : i + n] for i in range(count)]
    return torch.cat(parts, dim=2).reshape(m * n, count * c, d)


def _prefix(x: Tensor, shift: int) -> Tensor:
    """x (N, n, ...) -> out[:, t] = sum of x[:, u] over u < t - shift (zeros where none)."""
    n = x.shape[1]
    zero = torch.zeros_like(x[:, 0])
    outs, acc = [zero] * min(n, shift + 1), zero
    for t in range(n - shift - 1):
        acc = acc + x[:, t]
        outs.append(acc)
    return torch.stack(outs, 1)


def stabiliser(s: Tensor, l_den: Tensor | None, log_gamma: Tensor | None) -> Tensor:
    """Row shift m >= every log-weight, so that exp(s + log gamma - m) <= 1 and
    exp(-m) * linear denominator <= 1, one of them = 1 (the normaliser stays >= 1). It
    cancels between numerator and denominator, so it carries no gradient.

    s: (..., L) window scores (-inf outside); l_den: (..., 1) linear denominator or None;
    log_gamma: broadcastable to (..., 1) (constant along a row) or None.
    """
    with torch.no_grad():
        m = s.amax(-1, keepdim=True)
        if log_gamma is not None:
            m = m + log_gamma
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
    return torch.addcmul(num, l_num, w / safe), den + w


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


def _linear_part(fq, fk, v_aug, diff, window, causal, before, after, real, kv_heads, c, n):
    """Linear numerators and denominators (B K n, G c, Dv + 1): keys inside the slab but out
    of the window, plus the running sums of the chunks beyond the slab."""
    b = fq.shape[0]
    fqr = _rows(fq, kv_heads, c, n)
    fkc = _keys(fk, c, n)
    if real is not None:
        fkc = fkc * real
    bk, _, _, nf = fkc.shape
    g = fqr.shape[1] // c
    if causal:  # chunks t - o holding keys j <= i - w: o >= o_min
        o_min = max(0, math.ceil((window - c + 1) / c)) if window else 0
        count = before - o_min + 1
    else:
        count = before + 1 + after
    out = None
    if count > 0:
        width = count * c
        f = torch.bmm(fqr, _slab(fkc, before, after, count).transpose(1, 2))
        lin = diff[:, :width] >= window if causal else diff.abs() >= window
        f.view(b, kv_heads, n, g, c, width).mul_(lin.to(f.dtype))  # in place: bmm keeps no output
        out = torch.bmm(f.view(bk * n, g * c, width), _slab(v_aug, before, after, count))
    chunk_kv = torch.bmm(fkc.reshape(bk * n, c, nf).transpose(1, 2), v_aug.reshape(bk * n, c, -1))
    chunk_kv = chunk_kv.view(bk, n, nf, -1)
    states = [_prefix(chunk_kv, before)]
    if not causal:
        states.append(torch.flip(_prefix(torch.flip(chunk_kv, (1,)), after), (1,)))
    for state in states:
        part = torch.bmm(fqr, state.reshape(bk * n, nf, -1))
        out = part if out is None else out + part
    return out


def _causal_linear_context(fk, v_aug, window, before, real, kv_heads, c, n) -> dict:
    """What every group of a causal hybrid needs from the keys for its linear part: the running
    sums of ``phi(k) v^T`` of the chunks beyond each chunk's slab (B K, n, F, Dv + 1), and the
    keys/values of the slab chunks that hold linear keys (``count`` of them, padded)."""
    fkc = _keys(fk, c, n)
    if real is not None:
        fkc = fkc * real
    bk, _, _, nf = fkc.shape
    chunk_kv = torch.bmm(fkc.reshape(bk * n, c, nf).transpose(1, 2), v_aug.reshape(bk * n, c, -1))
    o_min = max(0, math.ceil((window - c + 1) / c)) if window else 0  # chunks t - o, o >= o_min
    return {"states": _prefix(chunk_kv.view(bk, n, nf, -1), before),
            "count": before - o_min + 1,
            "fkp": F.pad(fkc, (0, 0, 0, 0, before, 0))}  # fmt: skip


def _linear_group(fqr, ctx, a, e, vp, diff, window) -> Tensor:
    """Linear numerators | denominators (B K n_g, G c, Dv + 1) of chunks a..e-1 (causal).
    fqr: (B K n_g, G c, F) feature rows; vp: values padded like ``ctx["fkp"]``; diff (c, L)."""
    states = ctx["states"][:, a:e]
    out = torch.bmm(fqr, states.reshape(-1, *states.shape[2:]))
    count, c = ctx["count"], diff.shape[0]
    if count > 0:  # linear keys inside the slab: the oldest ``count`` chunks of it
        f = torch.bmm(fqr, _slab_range(ctx["fkp"], a, e, count).transpose(1, 2))
        lin = (diff[:, : count * c] >= window).to(f.dtype)
        f.view(f.shape[0], -1, c, count * c).mul_(lin)  # in place: bmm keeps no output
        out = out + torch.bmm(f, _slab_range(vp, a, e, count))
    return out


GROUP_BYTES = 8 << 20
"""Chunks are processed in groups whose window scores and outputs take about this many bytes:
each group's temporaries stay below glibc's mmap threshold and are reused by the next group
instead of being page-faulted afresh (what one (S x slab) score tensor costs at 16k tokens)."""


def _slab_range(padded: Tensor, a: int, e: int, count: int) -> Tensor:
    """Slabs of chunks a..e-1 from ``padded`` (N, before + n + after, c, D) (zeros beyond the
    ends): (N (e - a), count c, D), oldest first."""
    m, _, c, d = padded.shape
    parts = [padded[:, a + i : e + i] for i in range(count)]
    return torch.cat(parts, dim=2).reshape(m * (e - a), count * c, d)


def _window_group(qr, k_slab, v_slab, win, log_g, l_den6, ks, vs, sink_real, first,
                  b, kv_heads, g, c) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Window part of one group of chunks: numerators | denominators (B K, n_g, G c, Dv + 1)
    and the row stabiliser m (B, K, n_g, G, c, 1), against each chunk's slab (``win``: the
    allowed slab keys) and, from local chunk ``first`` on, the sink keys ``ks`` (B K, s, D)
    (values ``vs`` (B K, s, Dv + 1), padding mask ``sink_real`` (B, s))."""
    n_g = qr.shape[0] // (b * kv_heads)
    s = torch.bmm(qr, k_slab.transpose(1, 2))
    s6 = s.view(b, kv_heads, n_g, g, c, -1)
    s6.masked_fill_(~win, float("-inf"))  # in place, like the exp below
    m = stabiliser(s6, l_den6, log_g)
    sink = None
    if ks is not None and first < n_g:  # chunks whose slab does not reach position 0
        sink = torch.bmm(qr.view(b * kv_heads, -1, qr.shape[-1]), ks.transpose(1, 2))
        sink = sink.view(b, kv_heads, n_g, g, c, -1)
        sink[:, :, :first] = float("-inf")
        if sink_real is not None:
            sink.masked_fill_(~sink_real.bool().view(b, 1, 1, 1, 1, -1), float("-inf"))
        with torch.no_grad():
            top = sink.amax(-1, keepdim=True) + (0.0 if log_g is None else log_g)
            m = torch.maximum(m, top)  # -inf rows change nothing
        sink.sub_(m if log_g is None else m - log_g).exp_()  # 0 where masked
    s6.sub_(m if log_g is None else m - log_g).exp_()  # 0 outside the window
    out = torch.bmm(s, v_slab).view(b * kv_heads, n_g, g * c, -1)
    if sink is not None:  # in place: bmm keeps its inputs, not its output
        extra = torch.bmm(sink.view(b * kv_heads, n_g * g * c, -1), vs)
        out.view(b * kv_heads, n_g * g * c, -1).add_(extra)
    return out, m


def banded_attention(
    q: Tensor | None,
    k: Tensor | None,
    v: Tensor,
    fq: Tensor | Callable[[Tensor], Tensor] | None,
    fk: Tensor | None,
    window: int,
    causal: bool,
    key_mask: Tensor | None = None,
    gamma: Tensor | None = None,
    chunk: int = 64,
    terrace: bool = False,
    sinks: int = 0,
) -> Tensor:
    """Window softmax part (q, k, ``window >= 1``) plus linear part (fq, fk): see module doc.

    q: (B, H, S, D), k: (B, H_kv, S, D), v: (B, H_kv, S, Dv); fq: (B, H, S, F), or the feature
    map itself (called on slices of q, so that phi(q) is never held whole), fk: (B, H_kv, S, F),
    non-negative. ``key_mask``: (B, S) bool, True = real key. ``gamma``: (H,) positive
    weight of the window part. ``terrace``: the terraced window (causal, ``chunk == window``).
    ``sinks``: the first ``sinks`` positions (<= chunk, causal) join every later query's window
    part and leave its linear part (StreamingLLM's attention sinks). Returns (B, H, S, Dv) in
    the dtype of v (a transposed view of a (B, S, H, Dv) tensor). Query rows with no allowed
    key give 0.
    """
    use_window, use_linear = q is not None and window > 0, fq is not None
    fq_map = None
    if fq is not None and not isinstance(fq, Tensor):  # the feature map itself
        if use_window and causal:
            fq_map, fq = fq, None
        else:
            fq = fq(q)
    if not use_window and not use_linear:
        raise ValueError("banded_attention needs a window part, a linear part or both")
    if terrace and not (causal and use_window and chunk == window):
        raise ValueError("terrace needs causal attention with a window part and chunk == window")
    if sinks and not (causal and use_window and 0 < sinks <= chunk):
        raise ValueError("sinks need causal attention with a window part and sinks <= chunk")
    b, kv_heads, seq, dv = v.shape
    heads = (q if q is not None else fq).shape[1]
    g = heads // kv_heads
    if not use_window and not causal:
        return _global_linear(fq, fk, v, key_mask)
    window = window if use_window else 0
    c = max(1, min(chunk, seq))
    n = math.ceil(seq / c)
    p = math.ceil((window - 1) / c) if window > 1 else 0
    if terrace:  # the whole previous tile is in the window: no linear key in the slab
        p, window = 1, 2 * c
    before, after = p, (0 if causal else p)
    dtype = torch.promote_types(v.dtype, torch.float32)

    # keys that are not real: padding, and (bidirectional) the zero rows past the end
    real = slab_real = None
    if key_mask is not None or (not causal and n * c != seq):
        r = torch.ones(b, seq, dtype=dtype, device=v.device) if key_mask is None else key_mask
        r = F.pad(r.to(dtype), (0, n * c - seq)).view(b, 1, n, c, 1)
        real = r.expand(b, kv_heads, n, c, 1).reshape(b * kv_heads, n, c, 1)
        slab_real = _slab(r.view(b, n, c, 1), before, after).view(b, 1, n, 1, 1, -1) > 0
    vc = _keys(v.to(dtype), c, n)
    v_aug = torch.cat([vc, torch.ones_like(vc[..., :1])], dim=-1)  # -> numerator | denominator
    width = (before + 1 + after) * c
    rows = torch.arange(c, device=v.device)[:, None] + before * c
    diff = rows - torch.arange(width, device=v.device)[None, :]  # (c, L): i - j in the slab

    sinks = min(sinks, seq)
    lin = ctx = None
    if use_linear:
        fk = fk.to(dtype)
        if sinks:  # sink keys are softmax keys for every query: out of the linear sums
            fk = fk * (torch.arange(seq, device=v.device) >= sinks).to(dtype)[:, None]
        if use_window and causal:  # computed group by group below
            ctx = _causal_linear_context(fk, v_aug, window, before, real, kv_heads, c, n)
        else:
            lin = _linear_part(fq.to(dtype), fk, v_aug, diff, window, causal, before,
                               after, real, kv_heads, c, n)  # fmt: skip
            l_num, l_den = lin[..., :dv], lin[..., dv:]
    if not use_window:
        y = l_num / l_den.clamp_min(torch.finfo(dtype).tiny)
    else:
        win = (diff >= 0) & (diff < window) if causal else diff.abs() < window
        t = torch.arange(n, device=v.device)[:, None, None] * c
        j = t + (rows - before * c) - diff  # (n, c, L): position of each slab key
        if sinks:
            win = win | ((diff >= 0) & (j < sinks))
        win = (win & (j >= 0) & (j < seq)).view(1, 1, n, 1, c, width)
        if slab_real is not None:
            win = win & slab_real
        log_g = None
        if gamma is not None:
            log_g = gamma.to(dtype).log().view(1, kv_heads, 1, g, 1, 1)
        bk = b * kv_heads
        kp = F.pad(_keys(k.to(dtype), c, n), (0, 0, 0, 0, before, after))
        vp = F.pad(v_aug, (0, 0, 0, 0, before, after))
        use_sinks = sinks and n > p + 1
        ks = k[:, :, :sinks].to(dtype).reshape(bk, sinks, -1) if use_sinks else None
        vs = v_aug[:, 0, :sinks] if use_sinks else None
        sink_real = None if key_mask is None or not use_sinks else key_mask[:, :sinks]
        scale = q.shape[-1] ** -0.5
        per_chunk = bk * g * c * (width + dv + 1) * 4  # bytes of a chunk's scores and output
        step = max(1, GROUP_BYTES // per_chunk)
        ys = []
        for a in range(0, n, step):  # groups of chunks: temporaries stay small and get reused
            e = min(n, a + step)
            rows_g = bk * (e - a)
            lin_g = None
            if ctx is not None:
                fq_g = fq[:, :, a * c : e * c] if fq_map is None else fq_map(q[:, :, a * c : e * c])
                fqr = _rows(fq_g.to(dtype), kv_heads, c, e - a)
                lin_g = _linear_group(fqr, ctx, a, e, vp, diff, window)
            elif lin is not None:
                lin_g = lin.view(bk, n, g * c, dv + 1)[:, a:e].reshape(rows_g, g * c, dv + 1)
            l_den6 = None if lin_g is None else lin_g[..., dv:].view(b, kv_heads, e - a, g, c, 1)
            qr = _rows(q[:, :, a * c : e * c].to(dtype), kv_heads, c, e - a) * scale
            out, m = _window_group(
                qr, _slab_range(kp, a, e, width // c), _slab_range(vp, a, e, width // c),
                win[:, :, a:e], log_g, l_den6, ks, vs, sink_real, max(0, p + 1 - a),
                b, kv_heads, g, c,
            )  # fmt: skip
            out = out.view(rows_g, g * c, dv + 1)
            num, den = out[..., :dv], out[..., dv:]
            if lin_g is not None:
                num, den = add_linear(num, den, lin_g[..., :dv], lin_g[..., dv:],
                                      m.view(rows_g, g * c, 1))  # fmt: skip
            ys.append((num / den.clamp_min(torch.finfo(dtype).tiny)).view(bk, e - a, g * c, dv))
        y = torch.cat(ys, dim=1)
    y = y.reshape(b, kv_heads, n, g, c, dv).permute(0, 2, 4, 1, 3, 5)
    y = y.reshape(b, n * c, heads, dv)[:, :seq].transpose(1, 2)
    return y.to(v.dtype)
