"""Attention and relation distillation losses (MiniLM, MiniLMv2, TinyBERT, Hedgehog-style).

Every loss takes queries/keys (and values), never attention probabilities, and builds the
attention itself: ``softmax(q k^T / sqrt(d))`` per head. Conventions shared by all functions:

- q, k, v: (batch, heads, seq, head_dim). Teacher and student may differ in head_dim but must
  have the same number of query heads. GQA: k (and v) may have fewer heads than q when the
  q head count is a multiple of it; query head h uses key head ``h // (H / H_kv)``.
- ``mask``: (batch, seq) bool, True = real token. Padded keys get probability 0, padded query
  rows are left out of the mean; whatever padded positions hold (even inf/NaN) never reaches
  the loss or the gradients. An all-padding batch gives 0. ``causal=True`` masks keys j > i.
- Reduction: mean over batch, heads and real query rows.
- ``impl``: "naive" builds the (B, H, S, S) matrices; "chunked" is the exact row-block form
  (memory linear in seq; FlashAttention-style row blocks, Dao et al. 2022); "auto" picks
  chunked from ``AUTO_CHUNKED_MIN_SEQ`` on. Both give the same values and gradients up to rounding.
- Inputs are computed in their promoted dtype, at least float32; the loss has that dtype.
- ``teacher_bias`` / ``student_bias`` (attention losses, not the relation ones): a
  :class:`~attnkd.losses.position_bias.RelativePositionBias` added to that model's scaled
  scores (MPNet), so the loss sees the model's real attention ``softmax(q k^T/sqrt(d) + bias)``;
  its table gets gradients like any input. The chunked form builds each block's bias slab from
  the 2*seq - 1 values per head, so it stays linear in seq.
- Gradients reach every input that requires them, teacher included; a frozen teacher (no
  ``requires_grad``) costs nothing extra. The chunked form forms them during the forward pass
  and supports first-order gradients only (use ``impl="naive"`` for double backward).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from attnkd.losses import _attention_chunked as chunked
from attnkd.losses import _attention_naive as naive
from attnkd.losses._attention_blocks import compute_dtype
from attnkd.losses._mask import check_mask
from attnkd.losses.position_bias import RelativePositionBias, offset_slab

Impl = Literal["auto", "naive", "chunked"]
AUTO_CHUNKED_MIN_SEQ = 32
"""Measured here (relation_kl fwd+bwd, batch 32, width 384, 12 heads): chunked/naive time 1.14 at
seq 16, 0.97 at 32, 0.58 at 64, 0.46 at 128, 0.23 at 256."""


def attention_kl(
    teacher_q: Tensor,
    teacher_k: Tensor,
    student_q: Tensor,
    student_k: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    impl: Impl = "auto",
    reverse: bool = False,
    teacher_bias: RelativePositionBias | None = None,
    student_bias: RelativePositionBias | None = None,
) -> Tensor:
    """MiniLM attention transfer: mean over heads and real rows of KL(A_T[h,i] || A_S[h,i]).

    q/k: (B, H, S, D) (D may differ between models; k may have H_kv | H heads).
    ``reverse=True`` gives KL(A_S || A_T). Returns a scalar. (Wang et al. 2020, MiniLM.)
    """
    tq, tk, sq, sk, mask = _check_attention(teacher_q, teacher_k, student_q, student_k, mask)
    tb, sb = _bias_offsets(teacher_bias, student_bias, sq.shape[1], sq.shape[2])
    if _use_chunked(impl, sq.shape[2]):
        opt = _options(causal, (tq, tk, sq, sk), reverse=reverse)
        return chunked.chunked_divergence(tq, tk, sq, sk, mask, opt, tb, sb)
    tq, tk, sq, sk = _naive_inputs((tq, tk, sq, sk), mask)
    a = _naive_scores(tq, tk, tb)
    b = _naive_scores(sq, sk, sb)
    return naive.divergence(a, b, mask, causal, "kl", reverse)


def relation_kl(
    teacher_x: Tensor,
    teacher_y: Tensor,
    student_x: Tensor,
    student_y: Tensor,
    num_relation_heads: int,
    mask: Tensor | None = None,
    causal: bool = False,
    impl: Impl = "auto",
    reverse: bool = False,
) -> Tensor:
    """MiniLMv2 self-attention relation KL: KL(softmax(X_r Y_r^T/sqrt(d_r))_T || ..._S).

    x/y: (B, S, width), e.g. the concatenated queries of all heads; each model splits its own
    width into ``num_relation_heads`` heads (d_r = width / heads), so widths and attention
    head counts may differ between models. Value relation: ``relation_kl(v_t, v_t, v_s, v_s,
    r)``. Mean over relation heads and real rows. (Wang et al. 2021, MiniLMv2.)
    """
    parts, split = [], {}
    for name, x in (
        ("teacher_x", teacher_x),
        ("teacher_y", teacher_y),
        ("student_x", student_x),
        ("student_y", student_y),
    ):
        if id(x) not in split:  # X X^T: one view, so the chunked form prepares X once
            split[id(x)] = _split_relation_heads(name, x, num_relation_heads)
        parts.append(split[id(x)])
    if teacher_x.shape[-1] != teacher_y.shape[-1] or student_x.shape[-1] != student_y.shape[-1]:
        raise ValueError("x and y of one model must have the same width")
    return attention_kl(*parts, mask=mask, causal=causal, impl=impl, reverse=reverse)


def value_relation_kl(
    teacher_v: Tensor,
    student_v: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    impl: Impl = "auto",
) -> Tensor:
    """MiniLM value-relation KL: per head KL(softmax(V V^T/sqrt(d))_T || ..._S).

    v: (B, H, S, D); head counts must match, head dims may differ. (Wang et al. 2020, MiniLM.)
    """
    return attention_kl(teacher_v, teacher_v, student_v, student_v, mask, causal, impl)


def attention_ce(
    teacher_q: Tensor,
    teacher_k: Tensor,
    student_q: Tensor,
    student_k: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    student_kernel: Literal["softmax", "linear"] = "softmax",
    impl: Impl = "auto",
    teacher_bias: RelativePositionBias | None = None,
    student_bias: RelativePositionBias | None = None,
) -> Tensor:
    """Attention cross-entropy ``-sum_j A_T[i,j] log A_S[i,j]``, mean over heads and real rows.

    Teacher weights A_T = softmax(q_t k_t^T / sqrt(d_t)). The student's weights are built from
    its own inputs, which are never probabilities:
    ``student_kernel="softmax"``: student_q/k are queries/keys, A_S = softmax(q_s k_s^T/sqrt(d_s));
    ``"linear"``: student_q/k are non-negative feature maps phi(q), phi(k) (B, H, S, F) of a
    linear attention, A_S[i,j] = phi(q_i).phi(k_j) / sum_j phi(q_i).phi(k_j) (Hedgehog,
    Zhang et al. 2024); weights are clamped at the dtype's ``tiny`` before the log. A linear
    student takes no ``student_bias``.
    """
    if student_kernel not in ("softmax", "linear"):
        raise ValueError(f"student_kernel must be 'softmax' or 'linear', got {student_kernel!r}")
    if student_kernel == "linear" and student_bias is not None:
        raise ValueError("a linear-attention student (student_kernel='linear') takes no bias")
    tq, tk, sq, sk, mask = _check_attention(teacher_q, teacher_k, student_q, student_k, mask)
    tb, sb = _bias_offsets(teacher_bias, student_bias, sq.shape[1], sq.shape[2])
    if _use_chunked(impl, sq.shape[2]):
        opt = _options(causal, (tq, tk, sq, sk), mode="ce", student_kernel=student_kernel)
        return chunked.chunked_divergence(tq, tk, sq, sk, mask, opt, tb, sb)
    tq, tk, sq, sk = _naive_inputs((tq, tk, sq, sk), mask)
    a = _naive_scores(tq, tk, tb)
    if student_kernel == "linear":
        return naive.linear_ce(a, naive.scores(sq, sk, 1.0), mask, causal)
    return naive.divergence(a, _naive_scores(sq, sk, sb), mask, causal, "ce")


def attention_score_mse(
    teacher_q: Tensor,
    teacher_k: Tensor,
    student_q: Tensor,
    student_k: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    impl: Impl = "auto",
    teacher_bias: RelativePositionBias | None = None,
    student_bias: RelativePositionBias | None = None,
) -> Tensor:
    """TinyBERT attention loss: MSE of unnormalised scores q k^T/sqrt(d) (+ position bias),
    teacher vs student.

    Mean over batch, heads and allowed (query, key) pairs (both tokens real, key <= query when
    causal). Chunked without causal mask and bias: d x d Gram matrices in float64, no seq^2 at
    all; otherwise row blocks. (Jiao et al. 2020, TinyBERT.)
    """
    tq, tk, sq, sk, mask = _check_attention(teacher_q, teacher_k, student_q, student_k, mask)
    tb, sb = _bias_offsets(teacher_bias, student_bias, sq.shape[1], sq.shape[2])
    biased = tb is not None or sb is not None
    if _use_chunked(impl, sq.shape[2]) and (causal or biased):
        opt = _options(causal, (tq, tk, sq, sk))
        return chunked.chunked_score_mse(tq, tk, sq, sk, mask, opt, tb, sb)
    tq, tk, sq, sk = _naive_inputs((tq, tk, sq, sk), mask)
    if _use_chunked(impl, sq.shape[2]):
        return chunked.gram_score_mse(tq, tk, sq, sk, mask)
    return naive.score_mse(_naive_scores(tq, tk, tb), _naive_scores(sq, sk, sb), mask, causal)


def attention_output_mse(
    teacher_q: Tensor,
    teacher_k: Tensor,
    teacher_v: Tensor,
    student_q: Tensor,
    student_k: Tensor,
    student_v: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    impl: Impl = "auto",
    teacher_bias: RelativePositionBias | None = None,
    student_bias: RelativePositionBias | None = None,
) -> Tensor:
    """MSE between per-head attention outputs softmax(q k^T/sqrt(d)) v of teacher and student.

    v: (B, H_kv, S, Dv) like k; Dv must match between models. Mean over batch, heads, real rows
    and the Dv features. (Used by Hedgehog / LoLCATs / MOHAWK-style attention conversion.)
    """
    tq, tk, sq, sk, mask = _check_attention(teacher_q, teacher_k, student_q, student_k, mask)
    tv = _check_values("teacher", teacher_v, tk)
    sv = _check_values("student", student_v, sk)
    if tv.shape[-1] != sv.shape[-1]:
        raise ValueError(f"value head dims differ: teacher {tv.shape[-1]}, student {sv.shape[-1]}")
    tb, sb = _bias_offsets(teacher_bias, student_bias, sq.shape[1], sq.shape[2])
    if _use_chunked(impl, sq.shape[2]):
        opt = _options(causal, (tq, tk, tv, sq, sk, sv))
        return chunked.chunked_output_mse(tq, tk, tv, sq, sk, sv, mask, opt, tb, sb)
    tq, tk, tv, sq, sk, sv = _naive_inputs((tq, tk, tv, sq, sk, sv), mask)
    a = _naive_scores(tq, tk, tb)
    b = _naive_scores(sq, sk, sb)
    return naive.output_mse(a, tv, b, sv, mask, causal)


# ---------------------------------------------------------------- validation and preparation


def _use_chunked(impl: str, seq: int) -> bool:
    if impl not in ("auto", "naive", "chunked"):
        raise ValueError(f"impl must be 'auto', 'naive' or 'chunked', got {impl!r}")
    return impl == "chunked" or (impl == "auto" and seq >= AUTO_CHUNKED_MIN_SEQ)


def _options(causal: bool, tensors: tuple[Tensor, ...], **kw) -> chunked.ChunkOptions:
    grad_on = torch.is_grad_enabled()
    need = tuple(grad_on and x.requires_grad for x in tensors)
    return chunked.ChunkOptions(causal=bool(causal), need=need, **kw)


def _bias_offsets(
    teacher: RelativePositionBias | None, student: RelativePositionBias | None, heads: int, seq: int
) -> tuple[Tensor | None, Tensor | None]:
    """Each model's (heads, 2*seq - 1) bias values by offset (autograd ops), or None."""
    out = []
    for who, bias in (("teacher", teacher), ("student", student)):
        if bias is None:
            out.append(None)
            continue
        if not isinstance(bias, RelativePositionBias):
            raise TypeError(f"{who}_bias must be a RelativePositionBias, got {type(bias).__name__}")
        if bias.heads != heads:
            raise ValueError(
                f"{who}_bias table {tuple(bias.table.shape)} has {bias.heads} heads; the "
                f"attention has {heads} query heads"
            )
        out.append(bias.by_offset(seq))
    return out[0], out[1]


def _naive_scores(q: Tensor, k: Tensor, offsets: Tensor | None) -> Tensor:
    """Scaled scores (B, H, S, S) plus the full position bias when there is one."""
    x = naive.scores(q, k, q.shape[-1] ** -0.5)
    if offsets is None:
        return x
    return x + offset_slab(offsets.to(x.dtype), 0, x.shape[-2], x.shape[-1])


def _naive_inputs(xs: tuple[Tensor, ...], mask: Tensor | None) -> list[Tensor]:
    """Cast to the common compute dtype and zero padded positions (autograd ops), so inf/NaN
    there cannot leak (exact: they are unused). The chunked kernels do this themselves."""
    dtype = compute_dtype(*xs)
    if mask is None:
        return [x.to(dtype) for x in xs]
    m = mask[:, None, :, None]
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return [torch.where(m, x.to(dtype), zero) for x in xs]


def _check_attention(tq: Tensor, tk: Tensor, sq: Tensor, sk: Tensor, mask: Tensor | None):
    """Validate shapes (GQA, head counts, head dims) and the mask; returns inputs and mask."""
    named = (("teacher_q", tq), ("teacher_k", tk), ("student_q", sq), ("student_k", sk))
    for name, x in named:
        if x.dim() != 4:
            raise ValueError(f"{name} must be (batch, heads, seq, head_dim), got {tuple(x.shape)}")
    b, h, s, _ = tq.shape
    for name, x in named[1:]:
        if x.shape[0] != b or x.shape[2] != s:
            raise ValueError(f"{name} has batch/seq {(x.shape[0], x.shape[2])}, expected {(b, s)}")
    if sq.shape[1] != h:
        raise ValueError(
            f"teacher has {h} query heads, student {sq.shape[1]}: attention losses compare "
            "heads one to one; use relation_kl (MiniLMv2 relation heads) for different counts"
        )
    for who, q, k in (("teacher", tq, tk), ("student", sq, sk)):
        if h % k.shape[1]:
            raise ValueError(f"{who}: {h} query heads not divisible by {k.shape[1]} key heads")
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"{who}: q head_dim {q.shape[-1]} != k head_dim {k.shape[-1]}")
    mask = check_mask(mask, b, s)
    if mask is not None:
        mask = mask.to(tq.device)
    return tq, tk, sq, sk, mask


def _check_values(who: str, v: Tensor, k: Tensor) -> Tensor:
    if v.dim() != 4 or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"{who}_v must be (batch, kv_heads, seq, dv) like {who}_k "
            f"{tuple(k.shape[:3])}, got {tuple(v.shape)}"
        )
    return v


def _split_relation_heads(name: str, x: Tensor, heads: int) -> Tensor:
    """(B, S, W) -> (B, heads, S, W // heads) view."""
    if x.dim() != 3:
        raise ValueError(f"{name} must be (batch, seq, width), got {tuple(x.shape)}")
    if heads < 1 or x.shape[-1] % heads:
        raise ValueError(
            f"{name} width {x.shape[-1]} is not divisible by num_relation_heads={heads}"
        )
    b, s, w = x.shape
    return x.reshape(b, s, heads, w // heads).transpose(1, 2)
