"""Row-block machinery shared by the chunked attention losses (see :mod:`._attention_chunked`).

A :class:`Side` holds one model's queries and keys laid out for grouped matmuls (GQA keys are
shared through a reshape of the queries, never copied per head), builds the score slab of a
block of query rows into a preallocated buffer and turns a slab gradient ``G = dL/dscores``
into ``dQ = s G K`` and ``dK += s G^T Q`` (times a constant ``alpha``). Scale, key padding
and ``alpha`` cost no pass of their own: each score slab is one ``baddbmm`` that adds the
(0 or ``NEG``) key bias and applies the scale, and each gradient gemm applies its factor.
:func:`prepare` turns the raw inputs into contiguous, zero-padded tensors in one pass each
(an input passed twice, e.g. X of a self-relation X X^T, is prepared once).
:class:`Terminal` wraps a kernel whose gradients are formed during the forward pass (the
loss is terminal).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from attnkd.losses._amp import autocast_off
from attnkd.losses._vocab_chunked import is_one
from attnkd.losses.position_bias import offset_index

SLAB_ELEMENTS = 1 << 20  # values per score slab (1M: 4 MB in float32); tests shrink it
"""Measured here (relation_kl x3, batch 32, seq 128, 12 heads, fwd+bwd): 1M values per slab
106 ms, 512K 114, 2M 117, 4M 134: the few slabs of a block stay in cache."""
MIN_BLOCK_ROWS = 16  # fewer rows per block than this make thin, slow gemms; tests lower it


@dataclass(frozen=True)
class ChunkOptions:
    """Non-tensor settings of one chunked loss call."""

    causal: bool
    need: tuple[bool, ...]  # per tensor input: form its gradient
    mode: str = "kl"  # divergence kernel: "kl" or "ce"
    reverse: bool = False
    student_kernel: str = "softmax"  # "softmax" or "linear" (feature-map student)
    slab: int | None = None  # overrides SLAB_ELEMENTS


@dataclass(frozen=True)
class Block:
    """Batch elements [b0, b1), query rows [r0, r1), keys [0, cols)."""

    b0: int
    b1: int
    r0: int
    r1: int
    cols: int


@dataclass
class KernelOut:
    loss: Tensor
    grads: list[Tensor | None]  # aligned with the kernel's tensor inputs


def neg_fill(dtype: torch.dtype) -> float:
    """Finite 'minus infinity': exp gives 0, yet a fully masked row stays finite."""
    return -0.5 * torch.finfo(dtype).max


@dataclass
class Side:
    """One model's queries, keys (and values) for row-block matmuls."""

    q: Tensor  # (B, Hkv, g, S, D), prepared (contiguous, padded rows zero), not scaled
    k: Tensor  # (B, Hkv, S, D), prepared
    dim: int  # D
    scale: float
    bias: Tensor | None = None  # (B, S) additive key mask, 0 or NEG
    v: Tensor | None = None  # (B, Hkv, S, Dv)
    dq: Tensor | None = None
    dk: Tensor | None = None
    dv: Tensor | None = None
    qb: Tensor | None = None  # current block's queries, (b*Hkv, g*rows, D)
    alpha: float = 1.0  # constant factor of every gradient (mean weight, sign)
    pos: Tensor | None = None  # (H, 2S-1) relative-position score bias by offset j - i + S - 1
    dpos: Tensor | None = None  # its gradient
    rows: Tensor | None = None  # (B, S) 1/0 per query row: slab gradients are zeroed at 0 rows

    @classmethod
    def make(
        cls,
        q: Tensor,
        k: Tensor,
        scale: float,
        grad: bool,
        key_bias: Tensor | None = None,
        v: Tensor | None = None,
        pos: Tensor | None = None,
        pos_grad: bool = False,
    ) -> Side:
        """q (B, H, S, D), k (B, Hkv, S, D), both from :func:`prepare` (q may be k);
        ``key_bias`` (B, S): 0 or NEG per key; ``pos`` (H, 2S-1): a relative-position bias
        added to the scaled scores (see :mod:`attnkd.losses.position_bias`), its gradient
        formed when ``pos_grad``."""
        b, h, s, d = q.shape
        hkv = k.shape[1]
        side = cls(q.view(b, hkv, h // hkv, s, d), k, d, scale, key_bias, v)
        if pos is not None:
            side.pos = pos.detach().to(q.dtype).contiguous()
            side.dpos = torch.zeros_like(side.pos) if pos_grad else None
        if grad or pos_grad:
            side.dq = q.new_empty(b, hkv, h // hkv, s, d)  # every row is written once
            side.dk = q.new_zeros(b, hkv, s, d)
            side.dv = None if v is None else torch.zeros_like(v)
        return side

    @property
    def groups(self) -> int:
        return self.q.shape[2]

    def scores(self, blk: Block, buf: Tensor) -> Tensor:
        """Scaled (and key-masked) scores of the block: (b, H, rows, cols) view of ``buf``."""
        q = self.q[blk.b0 : blk.b1, :, :, blk.r0 : blk.r1]
        nb, hkv, g, rows, d = q.shape
        self.qb = q.reshape(nb * hkv, g * rows, d)
        kt = self.k[blk.b0 : blk.b1, :, : blk.cols].flatten(0, 1).transpose(1, 2)
        out = view(buf, (nb * hkv, g * rows, blk.cols))
        if self.bias is None:
            out.baddbmm_(self.qb, kt, beta=0.0, alpha=self.scale)
        else:
            bias = self.bias[blk.b0 : blk.b1, None, None, : blk.cols]
            bias = bias.expand(nb, hkv, 1, blk.cols).reshape(nb * hkv, 1, blk.cols)
            torch.baddbmm(bias, self.qb, kt, alpha=self.scale, out=out)
        out = out.view(nb, hkv * g, rows, blk.cols)
        if self.pos is not None:  # the (H, rows, cols) slab of the Toeplitz bias, per block
            out.add_(self.pos[:, self._offsets(blk)])
        return out

    def _offsets(self, blk: Block) -> Tensor:
        return offset_index(blk.r0, blk.r1, blk.cols, self.k.shape[2], self.k.device)

    def grouped(self, x: Tensor) -> Tensor:
        """(b, H, rows, n) -> (b, Hkv, g*rows, n) view for matmuls against shared keys."""
        nb, h, rows, n = x.shape
        return x.view(nb, h // self.groups, self.groups * rows, n)

    def backprop(self, g: Tensor, blk: Block) -> None:
        """Write ``alpha s G K`` into dq and add ``alpha s G^T Q`` to dk for the block's
        ``g = G`` (b, H, rows, cols); with a position bias, add ``alpha G`` summed over the
        batch to its gradient at each offset. Rows marked 0 in ``rows`` are zeroed in ``g``."""
        if self.rows is not None:
            g.mul_(self.rows[blk.b0 : blk.b1, None, blk.r0 : blk.r1, None])
        if self.dpos is not None:
            h = g.shape[1]
            idx = self._offsets(blk).reshape(1, -1).expand(h, -1)
            gsum = g.sum(0).reshape(h, -1).mul_(self.alpha)
            self.dpos.scatter_add_(1, idx, gsum)
        factor = self.alpha * self.scale
        g3 = self.grouped(g).flatten(0, 1)  # (b*Hkv, g*rows, cols)
        k3 = self.k[blk.b0 : blk.b1, :, : blk.cols].flatten(0, 1)
        dq = self.dq[blk.b0 : blk.b1, :, :, blk.r0 : blk.r1]
        if dq.is_contiguous():
            dq.view(g3.shape[0], g3.shape[1], self.dim).baddbmm_(g3, k3, beta=0.0, alpha=factor)
        else:
            dq.copy_(torch.bmm(g3, k3).view_as(dq)).mul_(factor)
        dk = self.dk[blk.b0 : blk.b1, :, : blk.cols]
        if dk.is_contiguous():  # one batched gemm accumulating in place
            dk.view(-1, blk.cols, self.dim).baddbmm_(g3.transpose(1, 2), self.qb, alpha=factor)
        else:  # a strided target would be split into one gemm per batch element
            dk.add_(torch.bmm(g3.transpose(1, 2), self.qb).view_as(dk), alpha=factor)

    def grads(self, need: tuple[bool, ...], mask: Tensor | None = None) -> list[Tensor | None]:
        """Gradients of (q, k[, v]); None where not requested. ``mask``: overwrite padded
        positions with 0 (only for kernels whose slab gradient is not already 0 there)."""
        if self.dq is None:
            return [None] * len(need)
        b, hkv, g, s, d = self.dq.shape
        out = [self.dq.view(b, hkv * g, s, d), self.dk, self.dv]
        if mask is not None:  # padded rows may hold finite garbage: overwrite, never multiply
            pad = ~mask[:, None, :, None]
            out = [None if x is None else x.masked_fill_(pad, 0.0) for x in out]
        return [x if n else None for x, n in zip(out, need)]


def with_bias_need(opt: ChunkOptions, *biases: Tensor | None) -> ChunkOptions:
    """``opt`` with one more ``need`` flag per position-bias input (after the tensor inputs):
    form its gradient when grad mode is on and it requires grad."""
    on = torch.is_grad_enabled()
    extra = tuple(on and b is not None and b.requires_grad for b in biases)
    return replace(opt, need=tuple(opt.need) + extra)


def mask_rows_if_biased(sides: tuple[Side, ...], mask: Tensor | None, like: Tensor) -> None:
    """A position bias makes padded query rows differ between the models (they are equal
    bias-only rows otherwise): zero every side's slab gradient there."""
    if mask is None or bool(mask.all()) or all(s.pos is None for s in sides):
        return
    rows = mask.to(like.dtype)
    for side in sides:
        side.rows = rows


def compute_dtype(*xs: Tensor | None) -> torch.dtype:
    """The promoted floating dtype of the inputs, at least float32."""
    dtype = None
    for x in xs:
        if x is not None:
            dtype = x.dtype if dtype is None else torch.promote_types(dtype, x.dtype)
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def prepare(xs: list[Tensor | None], mask: Tensor | None) -> list[Tensor | None]:
    """Contiguous copies of (B, H, S, D) inputs in their common compute dtype with padded
    positions zeroed (inf/NaN there cannot leak; exact, since they are unused). One pass per
    distinct input: an object passed twice is prepared once and returned twice."""
    dtype = compute_dtype(*xs)
    pad = None if mask is None or bool(mask.all()) else (~mask).nonzero(as_tuple=True)
    done: dict[int, Tensor] = {}
    out: list[Tensor | None] = []
    for x in xs:
        if x is None:
            out.append(None)
            continue
        if id(x) not in done:
            y = x.detach().to(dtype)
            if pad is None:
                y = y.contiguous()
            else:  # a copy and an indexed fill: several times faster than a masked where
                y = torch.empty(y.shape, dtype=dtype, device=y.device).copy_(y)
                y[pad[0], :, pad[1]] = 0
            done[id(x)] = y
        out.append(done[id(x)])
    return out


def view(buf: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Contiguous view of the first prod(shape) values of a flat buffer."""
    n = 1
    for s in shape:
        n *= s
    return buf[:n].view(shape)


def plan(batch: int, heads: int, seq: int, causal: bool, slab: int | None) -> list[Block]:
    """Blocks of about ``slab`` score values: whole sequences of as many batch elements as fit
    (contiguous gradient rows), else row blocks of one batch element at a time, of at least
    ``MIN_BLOCK_ROWS`` rows (the slab grows linearly with seq then)."""
    slab = slab or SLAB_ELEMENTS
    per_row = heads * seq
    if per_row * seq <= slab:
        bsz, rows = min(batch, slab // (per_row * seq)), seq
    else:
        bsz, rows = 1, min(seq, max(MIN_BLOCK_ROWS, slab // per_row, 1))
    out = []
    for b0 in range(0, batch, bsz):
        for r0 in range(0, seq, rows):
            r1 = min(seq, r0 + rows)
            out.append(Block(b0, min(batch, b0 + bsz), r0, r1, r1 if causal else seq))
    return out


def workspace(n: int, like: Tensor, heads: int, blocks: list[Block]) -> list[Tensor]:
    """``n`` flat buffers large enough for any block's (b, H, rows, cols) slab.

    On CPU the buffers are kept per thread and reused by the next call: fresh slabs would be
    page-faulted in on every call, which costs as much as the arithmetic at short lengths.
    At most a few slabs are kept (``SLAB_ELEMENTS`` values each, or one row when a single
    row is larger); :func:`release_workspace` frees them.
    """
    size = max((b.b1 - b.b0) * heads * (b.r1 - b.r0) * b.cols for b in blocks)
    if like.device.type != "cpu":  # the CUDA caching allocator already reuses memory
        return [torch.empty(size, dtype=like.dtype, device=like.device) for _ in range(n)]
    cache = _KEPT.__dict__.setdefault("bufs", {})
    kept = cache.get(like.dtype, [])
    if len(kept) < n or kept[0].numel() < size:
        cache.pop(like.dtype, None)
        kept = [torch.empty(size, dtype=like.dtype) for _ in range(n)]
        cache[like.dtype] = kept
    return kept[:n]


def release_workspace() -> None:
    """Free this thread's kept CPU slab buffers."""
    _KEPT.__dict__.pop("bufs", None)


_KEPT = threading.local()


def key_bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, S) additive key mask (0 real, NEG padded), or None when nothing is padded."""
    if mask is None or bool(mask.all()):
        return None
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.full((), neg_fill(dtype), dtype=dtype, device=mask.device))


def causal_fill(x: Tensor, blk: Block, value: float) -> None:
    """Fill keys j > i of a causal block; only its last ``rows`` columns can hold such keys."""
    rows = blk.r1 - blk.r0
    tri = torch.ones(rows, rows, dtype=torch.bool, device=x.device).triu_(1)
    x[..., blk.r0 : blk.r1].masked_fill_(tri, value)


def mean_weight(mask: Tensor | None, batch: int, heads: int, seq: int) -> float:
    """Weight of one (batch, head, real row) term in the mean; 0 when nothing is real."""
    n = batch * seq if mask is None else int(mask.sum())
    return 1.0 / (heads * n) if n else 0.0


def row_mask(mask: Tensor | None, batch: int, seq: int, like: Tensor) -> Tensor:
    """(B, S) 1.0 for real rows, 0.0 for padding, in ``like``'s dtype."""
    if mask is None:
        return torch.ones(batch, seq, dtype=like.dtype, device=like.device)
    return mask.to(like.dtype)


def merge_aliases(inputs: list[Tensor | None], grads: list[Tensor | None]) -> list[Tensor | None]:
    """Sum the gradients of an input passed at several positions (X of ``X X^T``) into one
    tensor laid out like that input, returned at its first position (None at the others):
    one pass, and a head-split view of a (B, S, W) input then needs no copy in backward."""
    out = list(grads)
    for i, x in enumerate(inputs):
        if x is None or out[i] is None:
            continue
        for j in range(i + 1, len(inputs)):
            if inputs[j] is x and out[j] is not None:
                merged = torch.empty_like(x, dtype=out[i].dtype)
                out[i], out[j] = torch.add(out[i], out[j], out=merged), None
    return out


class Terminal(torch.autograd.Function):
    """A scalar loss whose input gradients were formed during the forward pass."""

    @staticmethod
    @autocast_off
    def forward(ctx, kernel: Callable[..., KernelOut], opt: ChunkOptions, *tensors):
        out = kernel(list(tensors), opt)
        ctx.grads = out.grads
        ctx.dtypes = [None if x is None else x.dtype for x in tensors]
        return out.loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        # The usual upstream gradient of a loss is exactly 1: no pass over the gradients then.
        unit = is_one(grad_out)
        grads = []
        for g, dt in zip(ctx.grads, ctx.dtypes):
            if g is not None:
                g = g if unit else g * grad_out
                g = g if g.dtype == dt else g.to(dt)
            grads.append(g)
        return (None, None, *grads)
