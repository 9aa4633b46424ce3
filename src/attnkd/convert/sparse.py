"""Sparse attention from an estimated mask (SEA, Lee et al. 2024): a cheap estimate of the
attention picks the top-k keys of every query; the exact softmax runs over those k only.

The estimate is a low-rank score: ``e_ij = (q_i P_h) . (k_j P_h)`` with one learned
``P_h`` (head_dim x rank) per key head (start: the first ``rank`` coordinates), costing
``rank / head_dim`` of the exact scores. For each query the ``topk`` allowed keys of largest
``e_ij`` are kept, and ``y_i = softmax_{j in top}(q_i.k_j / sqrt(d)) v_j`` (exact, the layer's
own inherited q, k, v). Queries go in chunks, so memory is O(chunk x seq), never seq x seq.
The selection carries no gradient: ``P`` is trained (stage 1) to make the estimated attention
``softmax(e)`` match the teacher's (attention KL, :func:`attnkd.losses.attention_kl`).
Decoding keeps every key and value (the cache of the teacher) and reads k of them per token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkd.convert.mixer import Mixer
from attnkd.convert.state import MixerState


def topk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    qe: Tensor,
    ke: Tensor,
    topk: int,
    causal: bool,
    key_mask: Tensor | None = None,
    chunk: int = 64,
) -> Tensor:
    """Exact softmax over each query's ``topk`` keys of largest estimated score.

    q: (B, H, T, D) the last T of S positions; k/v: (B, H_kv, S, D); qe: (B, H, T, r), ke:
    (B, H_kv, S, r) estimate features; key_mask (B, S) bool. Rows with no allowed key give 0.
    Returns (B, H, T, Dv).
    """
    b, h, t, d = q.shape
    kh, s = k.shape[1], k.shape[2]
    g = h // kh
    offset = s - t
    qg, qeg = q.view(b, kh, g, t, d), qe.view(b, kh, g, t, -1)
    cols = torch.arange(s, device=q.device)
    outs = []
    for a in range(0, t, chunk):
        rows = torch.arange(a, min(a + chunk, t), device=q.device) + offset
        width = int(rows[-1]) + 1 if causal else s  # keys a causal chunk can see
        est = torch.einsum("bkgcr,bksr->bkgcs", qeg[:, :, :, a : a + chunk], ke[:, :, :width])
        allowed = (
            cols[None, :width] <= rows[:, None]
            if causal
            else torch.ones(len(rows), width, dtype=torch.bool, device=q.device)
        )
        allowed = allowed[None, None, None]
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, None, :width]
        est = est.masked_fill(~allowed, float("-inf"))
        top = est.topk(min(topk, width), dim=-1)
        valid = torch.isfinite(top.values)  # (B, K, G, c, k)
        idx = top.indices.reshape(b, kh, -1)
        kk = torch.gather(k, 2, idx[..., None].expand(-1, -1, -1, d)).view(*valid.shape, d)
        vv = torch.gather(v, 2, idx[..., None].expand(-1, -1, -1, v.shape[-1]))
        vv = vv.view(*valid.shape, v.shape[-1])
        sc = torch.einsum("bkgcd,bkgcjd->bkgcj", qg[:, :, :, a : a + chunk], kk) * d**-0.5
        sc = sc.masked_fill(~valid, float("-inf"))
        p = torch.softmax(sc, -1).nan_to_num(0.0)  # rows without any allowed key -> 0
        outs.append(torch.einsum("bkgcj,bkgcjd->bkgcd", p, vv))
    return torch.cat(outs, dim=3).reshape(b, h, t, v.shape[-1])


class SparseTopKAttention(Mixer):
    """Top-k sparse softmax attention with a learned low-rank estimator (SEA-style)."""

    kind = "sparse"

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        causal: bool,
        topk: int = 32,
        rank: int = 8,
        chunk: int | None = None,
    ) -> None:
        if not 1 <= rank <= head_dim or topk < 1:
            raise ValueError(f"need 1 <= rank <= {head_dim} and topk >= 1, got {rank}, {topk}")
        super().__init__(num_heads, num_kv_heads, head_dim, causal, chunk=chunk or 64)
        self.topk, self.rank = topk, rank
        self.proj = nn.Parameter(torch.eye(head_dim)[:, :rank].repeat(num_kv_heads, 1, 1))

    def options(self) -> dict:
        return {"topk": self.topk, "rank": self.rank, "chunk": self.chunk}

    def estimates(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Estimate features: q (B, H, S, D) -> (B, H, S, r); k (B, H_kv, S, D) -> (..., r)."""
        b, h, s, d = q.shape
        g = h // self.num_kv_heads
        qe = torch.einsum("bkgsd,kdr->bkgsr", q.view(b, -1, g, s, d), self.proj)
        return qe.reshape(b, h, s, -1), torch.einsum("bksd,kdr->bksr", k, self.proj)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        qe, ke = self.estimates(q, k)
        return topk_attention(q, k, v, qe, ke, self.topk, self.causal, key_mask, self.chunk)

    def step(self, q, k, v, key_mask, state: MixerState) -> Tensor:
        real = (
            key_mask
            if key_mask is not None
            else torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
        )
        state.push(k, v, real)
        state.seen += q.shape[2]
        qe, ke = self.estimates(q, state.keys)
        return topk_attention(q, state.keys, state.values, qe, ke, self.topk, True, state.real,
                              self.chunk)  # fmt: skip
