"""Exact row-block forms of the attention and relation losses.

Row blocks with exact per-row normalisers, as FlashAttention tiles softmax attention (Dao et
al. 2022, "FlashAttention"; Milakov & Gimelshein 2018, "Online normalizer calculation for
softmax"), applied to the divergence between two models' attention rows; the formulas are
derived below.

Query rows are independent, so each loss is computed over blocks of rows: the (rows x seq)
score slabs of both models are built in preallocated buffers, reduced with exact per-row
normalisers, and the gradient of the (terminal) loss is formed in the same pass, e.g. for
KL(P || S): ``G = w (S - P)`` on the student scores, ``dQ = s G K``, ``dK += G^T (s Q)``.
Peak extra memory is a few slabs of ``SLAB_ELEMENTS`` values plus gradients (linear in seq),
never seq^2; on CPU the slabs are kept per thread for the next call (``release_workspace``).
``backward`` only scales the stored gradients by the upstream gradient (double backward is
not supported). Gradients are formed only for inputs that require them, so a frozen teacher
(no ``requires_grad``, or produced under ``no_grad``) costs nothing, and a teacher that does
require grad gets its exact gradient too.

Per row, with teacher / student scores a, b and their log-normalisers A, B:
``KL = E_P[a - b] - A + B``: one fused softmax (one exp) per score and model, a row max and
row dot products. Inputs arrive prepared by :mod:`attnkd.losses.attention` (validated, one
dtype, padded positions zeroed).
A fused GPU kernel (e.g. Triton) would replace a ``_*_kernel`` function one for one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnkd.losses._attention_blocks import (
    Block,
    ChunkOptions,
    KernelOut,
    Side,
    Terminal,
    causal_fill,
    key_bias,
    mask_rows_if_biased,
    mean_weight,
    merge_aliases,
    neg_fill,
    plan,
    prepare,
    row_mask,
    view,
    with_bias_need,
    workspace,
)

__all__ = ["ChunkOptions", "chunked_divergence", "chunked_output_mse", "chunked_score_mse"]


def _softmax_rows(x: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """``out = softmax(x)`` per row and the row log-normaliser ``LSE(x)`` (b, H, rows, 1).

    The normaliser comes from the row max and the probability there:
    ``LSE = max x - log max P`` (max P >= 1/cols, so the log is well conditioned).
    """
    p = torch.softmax(x, -1, out=out)
    return p, x.amax(-1, keepdim=True) - p.amax(-1, keepdim=True).log_()


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """sum_j x_ij y_ij for (b, H, rows, cols) slabs -> (b, H, rows, 1), no temporary slab."""
    return torch.einsum("bhrs,bhrs->bhr", x, y).unsqueeze(-1)


def _divergence_kernel(t: list[Tensor | None], opt: ChunkOptions) -> KernelOut:
    """Per-row KL(P || S) / KL(S || P) / CE(P, S); P from the teacher, S from the student.

    With a = teacher scores, b = student scores (swapped for reverse KL), A, B their row LSEs:
    KL = E_P[a - b] - A + B, CE = B - E_P[b]; dL/db = S - P, dL/da = P (d - E_P[d]) with
    d = a - b (KL) or -b (CE).
    """
    mask, t_pos, s_pos = t[4:7]
    tq, tk, sq, sk = prepare(t[:4], mask)
    batch, heads, seq, _ = sq.shape
    linear = opt.student_kernel == "linear"
    bias = key_bias(mask, sq.dtype)
    need_pos = opt.need[4:6]
    ts = Side.make(tq, tk, tq.shape[-1] ** -0.5, opt.need[0] or opt.need[1], bias,
                   pos=t_pos, pos_grad=need_pos[0])  # fmt: skip
    s_scale = 1.0 if linear else sq.shape[-1] ** -0.5
    ss = Side.make(sq, sk, s_scale, opt.need[2] or opt.need[3], None if linear else bias,
                   pos=s_pos, pos_grad=need_pos[1])  # fmt: skip
    mask_rows_if_biased((ts, ss), mask, sq)
    p_side, q_side = (ss, ts) if opt.reverse else (ts, ss)  # loss = E_P[...] of p_side
    c = mean_weight(mask, batch, heads, seq)
    rows_real = row_mask(mask, batch, seq, sq)
    blocks = plan(batch, heads, seq, opt.causal, opt.slab)
    buf_a, buf_p, buf_b, buf_s = workspace(4, sq, heads, blocks)
    sign = -1.0 if linear or opt.mode == "ce" else 1.0
    p_side.alpha, q_side.alpha = sign * c, c
    neg = neg_fill(sq.dtype)
    total = torch.zeros((), dtype=torch.float64, device=sq.device)
    for blk in blocks:
        real = rows_real[blk.b0 : blk.b1, None, blk.r0 : blk.r1, None]
        a = p_side.scores(blk, buf_a)
        if opt.causal:
            causal_fill(a, blk, neg)
        p, lse_a = _softmax_rows(a, view(buf_p, a.shape))
        b = q_side.scores(blk, buf_b)
        if linear:
            lu = view(buf_s, b.shape)
            d, dot, row = _linear_rows(b, p, real, blk, opt, lu, q_side)
        else:
            if opt.causal:
                causal_fill(b, blk, neg)
            s, lse_b = _softmax_rows(b, view(buf_s, b.shape))
            if opt.mode == "kl":  # d: the row's term up to a per-row constant
                d, const = a.sub_(b), lse_b - lse_a
            else:
                d, const = b, lse_b
            dot = _rowdot(p, d)  # E_P[d]
            row = dot * sign + const
            if q_side.dq is not None:
                q_side.backprop(s.sub_(p), blk)
        total += (row * real).sum(dtype=torch.float64)
        if p_side.dq is not None:
            p_side.backprop(d.sub_(dot).mul_(p), blk)
    # Every slab gradient is exactly 0 at padded rows and keys (identical bias-only rows in
    # both models, or rows zeroed by mask_rows_if_biased; zero probabilities), except with a
    # linear student: overwrite there.
    fill = mask if linear else None
    grads = [*ts.grads(opt.need[:2], fill), *ss.grads(opt.need[2:4], fill), None]
    grads += [ts.dpos, ss.dpos]
    return KernelOut((total * c).to(sq.dtype), merge_aliases(t, grads))


def _linear_rows(
    u: Tensor,
    p: Tensor,
    real: Tensor,
    blk: Block,
    opt: ChunkOptions,
    buf: Tensor,
    student: Side,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy against a linear-attention student ``S = u / sum_j u`` (u >= 0).

    Returns (d = log u, E_P[d], row loss); backpropagates ``dL/du = 1/Z - P/u`` into
    the student when it needs it (``u`` is overwritten). Padded keys have u = 0 already
    (their feature maps were zeroed); padded rows get Z = 1 so nothing overflows.
    """
    tiny = torch.finfo(u.dtype).tiny
    if opt.causal:
        causal_fill(u, blk, 0.0)
    z = torch.where(real > 0, u.sum(-1, keepdim=True).clamp_min(tiny), 1.0)
    lu = torch.log(u.clamp_min_(tiny), out=buf)
    dot = _rowdot(p, lu)  # E_P[log u]
    row = z.log() - dot
    if student.dq is not None:
        g = torch.div(p, u, out=u).neg_().add_(z.reciprocal())
        if opt.causal:
            causal_fill(g, blk, 0.0)
        student.backprop(g, blk)
    return lu, dot, row


def _output_mse_kernel(t: list[Tensor | None], opt: ChunkOptions) -> KernelOut:
    """Mean over real rows, heads, features of (softmax(b) v_s - softmax(a) v_t)^2."""
    mask, t_pos, s_pos = t[6:9]
    tq, tk, tv, sq, sk, sv = prepare(t[:6], mask)
    batch, heads, seq, _ = sq.shape
    bias = key_bias(mask, sq.dtype)
    need_pos = opt.need[6:8]
    ts = Side.make(tq, tk, tq.shape[-1] ** -0.5, any(opt.need[:3]), bias, v=tv,
                   pos=t_pos, pos_grad=need_pos[0])  # fmt: skip
    ss = Side.make(sq, sk, sq.shape[-1] ** -0.5, any(opt.need[3:6]), bias, v=sv,
                   pos=s_pos, pos_grad=need_pos[1])  # fmt: skip
    w = row_mask(mask, batch, seq, sq) * (mean_weight(mask, batch, heads, seq) / sv.shape[-1])
    blocks = plan(batch, heads, seq, opt.causal, opt.slab)
    bufs = workspace(4, sq, heads, blocks)
    ts.alpha = -1.0  # dL/dO_t = -dL/dO_s
    neg = neg_fill(sq.dtype)
    total = torch.zeros((), dtype=torch.float64, device=sq.device)
    for blk in blocks:
        wb = w[blk.b0 : blk.b1, None, blk.r0 : blk.r1, None]
        probs, outs = [], []
        for side, raw, pbuf in ((ts, bufs[0], bufs[1]), (ss, bufs[2], bufs[3])):
            x = side.scores(blk, raw)
            if opt.causal:
                causal_fill(x, blk, neg)
            p = torch.softmax(x, -1, out=view(pbuf, x.shape))
            o = torch.matmul(side.grouped(p), side.v[blk.b0 : blk.b1, :, : blk.cols])
            probs.append(p)
            outs.append(o.view(*p.shape[:3], -1))
        err = outs[1] - outs[0]
        total += (err.square().sum(-1, keepdim=True) * wb).sum(dtype=torch.float64)
        d_out = err.mul_(2 * wb)  # dL/dO_s; dL/dO_t = -dL/dO_s
        for side, p, o, raw in ((ss, probs[1], outs[1], bufs[2]), (ts, probs[0], outs[0], bufs[0])):
            if side.dq is not None:
                _output_backprop(side, p, o, d_out, view(raw, p.shape), blk)
    grads = [*ts.grads(opt.need[:3]), *ss.grads(opt.need[3:6]), None]  # 0 at padding already
    grads += [ts.dpos, ss.dpos]  # rows: d_out is 0 at padded rows, so is every slab gradient
    return KernelOut(total.to(sq.dtype), merge_aliases(t, grads))


def _output_backprop(
    side: Side, p: Tensor, o: Tensor, d_out: Tensor, buf: Tensor, blk: Block
) -> None:
    """Backward of ``O = P V``, ``P = softmax(scores)`` for one block (``d_out = dL/dO_s``;
    the side's ``alpha`` gives its sign)."""
    pg, dog = side.grouped(p), side.grouped(d_out)
    v = side.v[blk.b0 : blk.b1, :, : blk.cols]
    dv = torch.matmul(pg.transpose(-1, -2), dog)
    side.dv[blk.b0 : blk.b1, :, : blk.cols].add_(dv, alpha=side.alpha)
    dp = torch.matmul(dog, v.transpose(-1, -2), out=side.grouped(buf)).view_as(p)
    delta = (d_out * o).sum(-1, keepdim=True)
    side.backprop(dp.sub_(delta).mul_(p), blk)


def _score_mse_kernel(t: list[Tensor | None], opt: ChunkOptions) -> KernelOut:
    """Row-block TinyBERT score MSE (for the causal case; padded inputs are zero)."""
    mask, t_pos, s_pos = t[4:7]
    tq, tk, sq, sk = prepare(t[:4], mask)
    batch, heads, seq, _ = sq.shape
    need_pos = opt.need[4:6]
    ts = Side.make(tq, tk, tq.shape[-1] ** -0.5, opt.need[0] or opt.need[1],
                   pos=t_pos, pos_grad=need_pos[0])  # fmt: skip
    ss = Side.make(sq, sk, sq.shape[-1] ** -0.5, opt.need[2] or opt.need[3],
                   pos=s_pos, pos_grad=need_pos[1])  # fmt: skip
    # padded inputs are zero, so without a position bias padded pairs give err = 0 already
    pairs = None
    if mask is not None and (t_pos is not None or s_pos is not None):
        pairs = mask.to(sq.dtype)
    count = max(heads * allowed_pairs(mask, batch, seq, opt.causal), 1)
    blocks = plan(batch, heads, seq, opt.causal, opt.slab)
    buf_t, buf_s = workspace(2, sq, heads, blocks)
    ss.alpha, ts.alpha = 2.0 / count, -2.0 / count
    total = torch.zeros((), dtype=torch.float64, device=sq.device)
    for blk in blocks:
        err = ss.scores(blk, buf_s).sub_(ts.scores(blk, buf_t))
        if pairs is not None:  # keep pairs of two real tokens only
            err.mul_(pairs[blk.b0 : blk.b1, None, blk.r0 : blk.r1, None])
            err.mul_(pairs[blk.b0 : blk.b1, None, None, : blk.cols])
        if opt.causal:  # padded rows and keys are 0 already: their inputs were zeroed
            causal_fill(err, blk, 0.0)
        total += torch.mul(err, err, out=view(buf_t, err.shape)).sum(dtype=torch.float64)
        if ss.dq is not None:
            ss.backprop(err, blk)
        if ts.dq is not None:
            ts.backprop(err, blk)
    grads = [*ts.grads(opt.need[:2]), *ss.grads(opt.need[2:4]), None]  # 0 at padding already
    grads += [ts.dpos, ss.dpos]
    return KernelOut((total / count).to(sq.dtype), merge_aliases(t, grads))


def allowed_pairs(mask: Tensor | None, batch: int, seq: int, causal: bool) -> int:
    """Number of (query, key) pairs with both tokens real (and key <= query if causal)."""
    if mask is None:
        return batch * (seq * (seq + 1) // 2 if causal else seq * seq)
    m = mask.to(torch.int64)
    if causal:
        return int((m * m.cumsum(-1)).sum())
    return int((m.sum(-1) ** 2).sum())


def gram_score_mse(tq: Tensor, tk: Tensor, sq: Tensor, sk: Tensor, mask: Tensor | None) -> Tensor:
    """Non-causal TinyBERT score MSE without any seq x seq matrix (Jiao et al. 2020 loss).

    ``||s_t Q_t K_t^T - s_s Q_s K_s^T||_F^2`` expanded into d x d Gram matrices accumulated
    in float64 (float32 would cancel); padded rows of q and k must already be zero (this
    function is plain autograd, so the caller zeroes them with autograd ops). Its backward
    is linear in seq as well.
    """
    batch, heads, seq, _ = sq.shape

    def prep(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.arange(heads, device=k.device) // (heads // k.shape[1])
        return q.double() * q.shape[-1] ** -0.5, k.double().index_select(1, idx)

    def inner(q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor) -> Tensor:
        return (q1.transpose(-1, -2) @ q2).mul(k1.transpose(-1, -2) @ k2).sum()

    qt, kt = prep(tq, tk)
    qs, ks = prep(sq, sk)
    total = inner(qt, kt, qt, kt) - 2 * inner(qt, kt, qs, ks) + inner(qs, ks, qs, ks)
    count = heads * allowed_pairs(mask, batch, seq, causal=False)
    return (total / max(count, 1)).to(sq.dtype)


def chunked_divergence(
    tq: Tensor,
    tk: Tensor,
    sq: Tensor,
    sk: Tensor,
    mask: Tensor | None,
    opt: ChunkOptions,
    teacher_bias: Tensor | None = None,
    student_bias: Tensor | None = None,
) -> Tensor:
    """Row-block KL / reverse KL / cross-entropy (inputs as for ``attention_kl``, prepared).

    ``teacher_bias`` / ``student_bias``: (H, 2S-1) relative-position score biases by offset
    (:meth:`attnkd.losses.position_bias.RelativePositionBias.by_offset`), gradients included.
    """
    opt = with_bias_need(opt, teacher_bias, student_bias)
    return Terminal.apply(_divergence_kernel, opt, tq, tk, sq, sk, mask, teacher_bias, student_bias)


def chunked_output_mse(
    tq: Tensor,
    tk: Tensor,
    tv: Tensor,
    sq: Tensor,
    sk: Tensor,
    sv: Tensor,
    mask: Tensor | None,
    opt: ChunkOptions,
    teacher_bias: Tensor | None = None,
    student_bias: Tensor | None = None,
) -> Tensor:
    """Row-block attention-output MSE (inputs as for ``attention_output_mse``, prepared;
    biases as for :func:`chunked_divergence`)."""
    opt = with_bias_need(opt, teacher_bias, student_bias)
    return Terminal.apply(
        _output_mse_kernel, opt, tq, tk, tv, sq, sk, sv, mask, teacher_bias, student_bias
    )


def chunked_score_mse(
    tq: Tensor,
    tk: Tensor,
    sq: Tensor,
    sk: Tensor,
    mask: Tensor | None,
    opt: ChunkOptions,
    teacher_bias: Tensor | None = None,
    student_bias: Tensor | None = None,
) -> Tensor:
    """Row-block TinyBERT score MSE (the causal case, or any case with a position bias;
    otherwise the caller uses :func:`gram_score_mse`, which has no seq x seq slab at all).
    Biases as for :func:`chunked_divergence`."""
    opt = with_bias_need(opt, teacher_bias, student_bias)
    return Terminal.apply(_score_mse_kernel, opt, tq, tk, sq, sk, mask, teacher_bias, student_bias)
