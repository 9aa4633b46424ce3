"""Exact token-chunked vocabulary divergences with the gradient formed in the forward pass.

Per-token divergences are independent, so processing tokens in chunks is exact. Because the
loss is terminal, the gradient w.r.t. the student logits is computed chunk by chunk during the
forward pass (gradients below; the same idea as the fused linear cross-entropy of Liger
Kernel, Hsu et al. 2024, and Cut Cross-Entropy, Wijmans et al. 2024) and the backward only
scales it by the upstream gradient: no recomputation and no second pass over the vocabulary.
Peak extra memory is one gradient buffer the size of the student logits (it becomes ``.grad``)
plus a few (chunk, vocab) slabs.

``token_divergence_from_hidden`` goes one step further: logits are built per chunk from final
hidden states and output weights, so the full logits of the two models never coexist.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._amp import autocast_off
from ._mask import check_mask

KINDS = ("fkl", "rkl", "jsd", "tvd")
_CHUNK_ELEMS = 1 << 22
"""Default chunk: about this many logits per slab (16 MiB in float32; 4-5 slabs are reused).
Smaller chunks are cheaper on an idle CPU (cache-resident), larger ones amortise the per-op
thread synchronisation, which dominates when the cores are shared (see bench/vocab_losses.py)."""


def resolve_kind(kind: str, beta: float, temperature: float, top_k: int | None = None) -> str:
    """Validate divergence arguments; return the effective kind (jsd endpoints map to KLs).

    Generalized JSD at beta = 0 is forward KL and at beta = 1 reverse KL (TRL's GKD convention;
    the mixture formula itself would give 0 at both endpoints).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if kind == "jsd" and beta == 0.0:
        return "fkl"
    if kind == "jsd" and beta == 1.0:
        return "rkl"
    return kind


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_size(vocab: int) -> int:
    """Tokens per chunk so that one (chunk, vocab) slab holds about 2**22 values."""
    return max(1, _CHUNK_ELEMS // max(vocab, 1))


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product of two (r, V) tensors without a (r, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class Workspace:
    """Reusable (rows, cols) slabs so the chunk loop allocates nothing per chunk.

    Slabs are flat buffers; ``take(i, r, c)`` views the first r*c values of slab i as (r, c).
    """

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device = dtype, device
        self._slabs: list[Tensor] = []

    def take(self, i: int, rows: int, cols: int) -> Tensor:
        while len(self._slabs) <= i:
            self._slabs.append(torch.empty(0, dtype=self.dtype, device=self.device))
        if self._slabs[i].numel() < rows * cols:
            self._slabs[i] = torch.empty(rows * cols, dtype=self.dtype, device=self.device)
        return self._slabs[i][: rows * cols].view(rows, cols)


def _log_probs(z: Tensor, tau: float, out: Tensor, spare: Tensor) -> Tensor:
    """log_softmax(z/τ) over the last dim into ``out`` (``spare`` holds z/τ when τ ≠ 1)."""
    if tau != 1.0:
        z = torch.div(z, tau, out=spare)
    return torch.log_softmax(z, -1, dtype=out.dtype, out=out)


@dataclass
class RowDivergence:
    """Per-row divergence ``values`` (r,) and its gradient w.r.t. the scaled student logits z/τ
    (r, V), or ``grad=None`` when not requested. ``grad`` may be a workspace view: consume it
    before the next call that uses the same workspace."""

    values: Tensor
    grad: Tensor | None


def rows_divergence(
    zs: Tensor,
    zt: Tensor,
    kind: str,
    beta: float,
    tau: float,
    want_grad: bool,
    ws: Workspace | None = None,
) -> RowDivergence:
    """Divergence of each row of (r, V) logits; ``kind`` must already be resolved.

    Inputs are never written. Teacher logits of -inf (probability 0) are allowed: the teacher's
    log-probabilities are clamped to the dtype's most negative value so that 0·log 0 reads 0.
    """
    cd = compute_dtype(zs.dtype)
    ws = ws or Workspace(cd, zs.device)
    r, v = zs.shape
    a, b, c = (ws.take(i, r, v) for i in range(3))
    ls = _log_probs(zs, tau, out=a, spare=b)  # student log-probs
    lt = _log_probs(zt, tau, out=b, spare=c).clamp_(min=torch.finfo(cd).min)  # teacher
    if kind == "fkl":
        p = torch.exp(lt, out=c)
        values = _rowdot(p, lt.sub_(ls))  # Σ P (log P − log S)
        grad = ls.exp_().sub_(p) if want_grad else None  # S − P
    elif kind == "rkl":
        s = torch.exp(ls, out=c)
        diff = torch.sub(ls, lt, out=lt)  # log S − log P
        values = _rowdot(s, diff)
        grad = diff.sub_(values[:, None]).mul_(s) if want_grad else None
    elif kind == "jsd":
        d = ws.take(3, r, v)
        torch.add(ls, math.log1p(-beta), out=c)
        torch.add(lt, math.log(beta), out=d)
        lm = torch.logaddexp(c, d, out=c)  # log M, M = βP + (1−β)S
        kl_p = _rowdot(torch.exp(lt, out=d), lt.sub_(lm))
        s = torch.exp(ls, out=d)
        diff = ls.sub_(lm)  # log S − log M
        kl_s = _rowdot(s, diff)
        values = beta * kl_p + (1.0 - beta) * kl_s
        grad = diff.sub_(kl_s[:, None]).mul_(s).mul_(1.0 - beta) if want_grad else None
    elif kind == "tvd":
        s = ls.exp_()
        diff = lt.exp_().sub_(s)  # P − S
        sign = torch.sign(diff, out=c).neg_()  # sign(S − P)
        values = -0.5 * _rowdot(sign, diff)
        grad = sign.sub_(_rowdot(s, sign)[:, None]).mul_(s).mul_(0.5) if want_grad else None
    else:
        raise ValueError(f"unresolved kind {kind!r}")
    return RowDivergence(values, grad)


def _selectors(batch: int, seq: int, mask: Tensor | None, chunk: int) -> Iterator[tuple]:
    """Index tuples selecting chunks of real tokens of a (batch, seq, ...) tensor."""
    if mask is None:
        for b in range(batch):
            for s0 in range(0, seq, chunk):
                yield (b, slice(s0, min(s0 + chunk, seq)))
        return
    bi, si = mask.nonzero(as_tuple=True)
    for i0 in range(0, bi.numel(), chunk):
        yield (bi[i0 : i0 + chunk], si[i0 : i0 + chunk])


def _tokens_as_one_row(*xs: Tensor) -> tuple[Tensor, ...] | None:
    """Views of (batch, seq, d) tensors as (1, batch*seq, d), or None if one needs a copy."""
    try:
        return tuple(x.view(1, -1, x.shape[-1]) for x in xs)
    except RuntimeError:
        return None


def _linear_into(h: Tensor, w: Tensor, b: Tensor | None, out: Tensor) -> Tensor:
    """``h wᵀ + b`` written into ``out`` (r, vocab)."""
    if b is None:
        return torch.mm(h, w.t(), out=out)
    return torch.addmm(b, h, w.t(), out=out)


def _top_k_reduce(
    zs: Tensor, zt: Tensor, top_k: int | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    if top_k is None or top_k >= zs.shape[-1]:
        return zs, zt, None
    idx = zt.topk(top_k, dim=-1).indices
    return zs.gather(-1, idx), zt.gather(-1, idx), idx


def is_one(grad_out: Tensor) -> bool:
    """True for an upstream gradient of exactly 1 on CPU (skips a pass; no device sync)."""
    return grad_out.device.type == "cpu" and grad_out.item() == 1.0


class _ChunkedLogits(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(ctx, student, teacher, mask, kind, beta, tau, chunk, reuse):
        batch, seq, vocab = student.shape
        cd = compute_dtype(student.dtype)
        want = ctx.needs_input_grad[0]
        n = seq * batch if mask is None else int(mask.sum())
        dz = None
        if want and reuse and _can_hold_grad(teacher, student):
            # Each chunk's teacher rows are read (into a workspace slab) before that chunk's
            # gradient is written over them; other rows are untouched until their turn.
            dz = teacher
        elif want:
            dz = torch.empty_like(student, memory_format=torch.contiguous_format)
        if dz is not None and mask is not None:
            dz[~mask] = 0  # padded rows: never read, so safe to clear first
        total = torch.zeros((), dtype=torch.float64, device=student.device)
        scale = tau / max(n, 1)
        flat = _tokens_as_one_row(student, teacher) if mask is None else None
        if flat is not None:  # no padding: chunk over all tokens at once (fewer, fuller chunks)
            student, teacher = flat
            dz_rows = None if dz is None else dz.view(student.shape)
            batch, seq = 1, student.shape[1]
        else:
            dz_rows = dz
        ws = Workspace(cd, student.device)
        for sel in _selectors(batch, seq, mask, chunk):
            res = rows_divergence(student[sel], teacher[sel], kind, beta, tau, want, ws)
            total += res.values.sum(dtype=torch.float64)
            if want and isinstance(sel[0], int):
                torch.mul(res.grad, scale, out=dz_rows[sel])
            elif want:
                dz_rows[sel] = res.grad.mul_(scale).to(dz.dtype)
        ctx.dz = dz
        return (total * (tau * tau / max(n, 1))).to(cd)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        dz = ctx.dz
        if dz is None:
            raise RuntimeError(
                "chunked token_divergence: backward ran twice (retain_graph); use impl='naive'"
            )
        ctx.dz = None  # hand the buffer over so autograd can adopt it as .grad without a copy
        if not is_one(grad_out):
            dz.mul_(grad_out.to(dz.dtype))
        return dz, None, None, None, None, None, None, None


def _can_hold_grad(teacher: Tensor, student: Tensor) -> bool:
    """Whether the teacher logits' memory can take the student-logit gradient in place."""
    return (
        teacher.shape == student.shape
        and teacher.dtype == student.dtype
        and teacher.device == student.device
        and teacher.is_contiguous()
        and not teacher.requires_grad
    )


def chunked_token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    kind: str,
    beta: float,
    temperature: float,
    mask: Tensor | None,
    chunk_size: int | None,
    overwrite_teacher: bool = False,
) -> Tensor:
    """Chunked form of ``token_divergence`` on (batch, seq, vocab) logits (arguments checked);
    ``overwrite_teacher``: the gradient may take the teacher logits' memory."""
    chunk = chunk_size or default_chunk_size(student_logits.shape[-1])
    return _ChunkedLogits.apply(
        student_logits,
        teacher_logits.detach(),
        mask,
        kind,
        beta,
        temperature,
        chunk,
        overwrite_teacher,
    )


class _ChunkedHidden(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, mask, kind, beta, tau, top_k, chunk):
        batch, seq, _ = h_s.shape
        cd = compute_dtype(h_s.dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        want = need_h or need_w or need_b
        n = seq * batch if mask is None else int(mask.sum())
        scale = tau / max(n, 1)
        g_h = torch.zeros(h_s.shape, dtype=h_s.dtype, device=h_s.device) if need_h else None
        g_w = torch.zeros(w_s.shape, dtype=cd, device=w_s.device) if need_w else None
        g_b = torch.zeros(w_s.shape[0], dtype=cd, device=w_s.device) if need_b else None
        total = torch.zeros((), dtype=torch.float64, device=h_s.device)
        ws = Workspace(cd, h_s.device)
        ws_s = Workspace(h_s.dtype, h_s.device)
        ws_t = Workspace(h_t.dtype, h_t.device)
        w_cd = w_s.to(cd)
        vocab = w_s.shape[0]
        g_h_rows = g_h
        flat = _tokens_as_one_row(h_s, h_t) if mask is None else None
        if flat is not None:
            h_s, h_t = flat
            g_h_rows = None if g_h is None else g_h.view(h_s.shape)
            batch, seq = 1, h_s.shape[1]
        for sel in _selectors(batch, seq, mask, chunk):
            hs = h_s[sel]
            r = hs.shape[0]
            zs = _linear_into(hs, w_s, b_s, ws_s.take(0, r, vocab))
            zt = _linear_into(h_t[sel], w_t, b_t, ws_t.take(0, r, vocab))
            zs, zt, idx = _top_k_reduce(zs, zt, top_k)
            res = rows_divergence(zs, zt, kind, beta, tau, want, ws)
            total += res.values.sum(dtype=torch.float64)
            if not want:
                continue
            dz = res.grad.mul_(scale)
            if idx is not None:
                dz = ws.take(4, r, vocab).zero_().scatter_(1, idx, dz)
            if need_h:
                g_h_rows[sel] = (dz @ w_cd).to(g_h.dtype)
            if need_w:
                g_w.addmm_(dz.t(), hs.to(cd))
            if need_b:
                g_b.add_(dz.sum(0))
        ctx.grads = [g_h, g_w, g_b]
        ctx.w_dtype = w_s.dtype
        return (total * (tau * tau / max(n, 1))).to(cd)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grads = ctx.grads
        if grads is None:
            raise RuntimeError("token_divergence_from_hidden: backward ran twice (retain_graph)")
        ctx.grads = None
        g_h, g_w, g_b = (None if g is None else g.mul_(grad_out.to(g.dtype)) for g in grads)
        g_w = None if g_w is None else g_w.to(ctx.w_dtype)
        g_b = None if g_b is None else g_b.to(ctx.w_dtype)
        return g_h, g_w, g_b, None, None, None, None, None, None, None, None, None


def token_divergence_from_hidden(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    kind: str = "fkl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    top_k: int | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``token_divergence`` of the logits ``h Wᵀ + b`` without materialising them.

    Shapes: hidden states (batch, seq, d_s) and (batch, seq, d_t) (widths may differ), output
    weights (vocab, d_s) and (vocab, d_t), optional biases (vocab,). Logits are built per chunk of
    tokens, so the full logits of the two models never coexist; gradients flow to
    ``student_hidden``, ``student_weight`` and ``student_bias`` (``grad_h = dz W``,
    ``grad_W = dzᵀ h``), never to the teacher. Other arguments as in ``token_divergence``.
    Returns a scalar (float32 unless inputs are float64).
    """
    kind = resolve_kind(kind, beta, temperature, top_k)
    if student_hidden.dim() != 3 or teacher_hidden.shape[:2] != student_hidden.shape[:2]:
        raise ValueError(
            "hidden states must be (batch, seq, d) with equal batch and seq, got "
            f"{tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}"
        )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"vocab sizes differ: {student_weight.shape[0]} vs {teacher_weight.shape[0]}"
        )
    if student_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError("student_weight must be (vocab, d_s) matching student_hidden")
    if teacher_weight.shape[1] != teacher_hidden.shape[-1]:
        raise ValueError("teacher_weight must be (vocab, d_t) matching teacher_hidden")
    batch, seq, _ = student_hidden.shape
    mask = check_mask(mask, batch, seq)
    if mask is not None and bool(mask.all()):
        mask = None
    chunk = chunk_size or default_chunk_size(student_weight.shape[0])
    t_bias = None if teacher_bias is None else teacher_bias.detach()
    return _ChunkedHidden.apply(
        student_hidden,
        student_weight,
        student_bias,
        teacher_hidden.detach(),
        teacher_weight.detach(),
        t_bias,
        mask,
        kind,
        beta,
        temperature,
        top_k,
        chunk,
    )
