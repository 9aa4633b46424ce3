"""Row-block machinery shared by the chunked attention losses (METHODS.md section 6).

A :class:`Side` holds one model's queries and keys laid out for grouped matmuls (GQA keys are
shared through a reshape of the queries, never copied per head), builds the score slab of a
block of query rows into a preallocated buffer and turns a slab gradient ``G = dL/dscores``
into ``dQ = s G K`` and ``dK += G^T (s Q)`` (times a constant ``alpha``, applied once).
Key padding costs no pass over the slab: the queries carry an extra column of ones and the
keys a column holding 0 (real) or ``NEG`` (padded), so the matmul itself adds the mask.
:class:`Terminal` wraps a kernel whose gradients are formed during the forward pass (the
loss is terminal).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

SLAB_ELEMENTS = 1 << 22  # values per score slab (4M: 16 MB in float32); tests shrink it


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

    q: Tensor  # (B, Hkv, g, S, D[+1]), multiplied by ``scale``; +1: the ones column
    k: Tensor  # (B, Hkv, S, D[+1]); +1: the key-padding bias column
    dim: int  # D
    scale: float
    v: Tensor | None = None  # (B, Hkv, S, Dv)
    dq: Tensor | None = None
    dk: Tensor | None = None
    dv: Tensor | None = None
    qb: Tensor | None = None  # current block's queries, (b, Hkv, g*rows, D[+1])
    alpha: float = 1.0  # constant factor of every gradient (mean weight, sign)

    @classmethod
    def make(
        cls,
        q: Tensor,
        k: Tensor,
        scale: float,
        grad: bool,
        key_bias: Tensor | None = None,
        v: Tensor | None = None,
    ) -> Side:
        """q (B, H, S, D), k (B, Hkv, S, D); ``key_bias`` (B, S): 0 or NEG per key."""
        b, h, s, d = q.shape
        hkv = k.shape[1]
        q = (q * scale).contiguous()  # elementwise ops keep a transposed input's layout
        if key_bias is not None:
            q = torch.cat([q, q.new_ones(b, h, s, 1)], dim=-1)
            k = torch.cat([k, key_bias[:, None, :, None].expand(b, hkv, s, 1)], dim=-1)
        side = cls(q.reshape(b, hkv, h // hkv, s, q.shape[-1]), k.contiguous(), d, scale)
        if v is not None:
            side.v = v.contiguous()
        if grad:
            side.dq = q.new_zeros(b, hkv, h // hkv, s, d)
            side.dk = q.new_zeros(b, hkv, s, d)
            side.dv = None if v is None else torch.zeros_like(side.v)
        return side

    @property
    def groups(self) -> int:
        return self.q.shape[2]

    def scores(self, blk: Block, buf: Tensor) -> Tensor:
        """Scaled (and key-masked) scores of the block: (b, H, rows, cols) view of ``buf``."""
        q = self.q[blk.b0 : blk.b1, :, :, blk.r0 : blk.r1]
        nb, hkv, g, rows, d = q.shape
        self.qb = q.reshape(nb, hkv, g * rows, d)
        out = view(buf, (nb, hkv, g * rows, blk.cols))
        torch.matmul(self.qb, self.k[blk.b0 : blk.b1, :, : blk.cols].transpose(-1, -2), out=out)
        return out.view(nb, hkv * g, rows, blk.cols)

    def grouped(self, x: Tensor) -> Tensor:
        """(b, H, rows, n) -> (b, Hkv, g*rows, n) view for matmuls against shared keys."""
        nb, h, rows, n = x.shape
        return x.view(nb, h // self.groups, self.groups * rows, n)

    def backprop(self, g: Tensor, blk: Block) -> None:
        """Accumulate ``G K`` into dq and ``G^T (s q)`` into dk for ``g = G`` (b, H, rows, cols).

        Scale and ``alpha`` are applied once, in :meth:`grads`.
        """
        g3 = self.grouped(g).flatten(0, 1)  # (b*Hkv, g*rows, cols)
        k3 = self.k[blk.b0 : blk.b1, :, : blk.cols, : self.dim].flatten(0, 1)
        dq = self.dq[blk.b0 : blk.b1, :, :, blk.r0 : blk.r1]
        dq.copy_(torch.bmm(g3, k3).view_as(dq))
        qb = self.qb[..., : self.dim].flatten(0, 1)
        dk = self.dk[blk.b0 : blk.b1, :, : blk.cols]
        if dk.is_contiguous():  # one batched gemm accumulating in place
            dk.view(-1, blk.cols, self.dim).baddbmm_(g3.transpose(1, 2), qb)
        else:  # a strided target would be split into one gemm per batch element
            dk.add_(torch.bmm(g3.transpose(1, 2), qb).view_as(dk))

    def grads(self, need: tuple[bool, ...], mask: Tensor | None) -> list[Tensor | None]:
        """Gradients of (q, k[, v]) times ``alpha``, zero at padded positions; None where not
        requested."""
        if self.dq is None:
            return [None] * len(need)
        b, hkv, g, s, d = self.dq.shape
        out = [self.dq.view(b, hkv * g, s, d).mul_(self.alpha * self.scale), self.dk, self.dv]
        out[1:] = [None if x is None else x.mul_(self.alpha) for x in out[1:]]
        if mask is not None:  # padded rows may hold finite garbage: overwrite, never multiply
            pad = ~mask[:, None, :, None]
            out = [None if x is None else x.masked_fill_(pad, 0.0) for x in out]
        return [x if n else None for x, n in zip(out, need)]


def view(buf: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Contiguous view of the first prod(shape) values of a flat buffer."""
    n = 1
    for s in shape:
        n *= s
    return buf[:n].view(shape)


def plan(batch: int, heads: int, seq: int, causal: bool, slab: int | None) -> list[Block]:
    """Row blocks of about ``slab`` score values (batch chunks when rows alone are too big)."""
    slab = slab or SLAB_ELEMENTS
    per_row = heads * seq
    bsz = batch if batch * per_row * min(seq, 16) <= slab else max(1, slab // (per_row * 16))
    rows = max(1, min(seq, slab // (bsz * per_row)))
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


class Terminal(torch.autograd.Function):
    """A scalar loss whose input gradients were formed during the forward pass."""

    @staticmethod
    def forward(ctx, kernel: Callable[..., KernelOut], opt: ChunkOptions, *tensors):
        out = kernel(list(tensors), opt)
        ctx.grads = out.grads
        ctx.dtypes = [None if x is None else x.dtype for x in tensors]
        return out.loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grads = [
            None if g is None else (g * grad_out).to(dt) for g, dt in zip(ctx.grads, ctx.dtypes)
        ]
        return (None, None, *grads)
