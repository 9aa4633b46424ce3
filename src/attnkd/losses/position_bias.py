"""Relative-position attention bias: a per-head score offset that depends only on j - i.

MPNet (Song et al. 2020), like T5 (Raffel et al. 2020), adds ``table[bucket(j - i), h]`` to the
scaled score of query i and key j in head h, so its attention is
``softmax(q k^T / sqrt(d) + bias)``; attention losses and maps built from captured q/k alone
would describe another distribution. The bias of a whole sequence is a Toeplitz matrix, held
here by its ``2 * seq - 1`` distinct values per head (:meth:`RelativePositionBias.by_offset`);
the chunked losses gather each block's (rows x keys) slab from them on the fly, so memory stays
linear in the sequence length, and scatter the slab's gradient back into them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RelativePositionBias:
    """An additive score bias ``table[bucket(j - i), h]`` of one model.

    ``table``: (num_buckets, heads), e.g. an ``nn.Embedding`` weight; gradients reach it.
    ``bucket``: maps a long tensor of relative positions ``j - i`` to bucket indices (same shape).
    """

    table: Tensor
    bucket: Callable[[Tensor], Tensor]

    @property
    def heads(self) -> int:
        return self.table.shape[-1]

    def by_offset(self, seq: int) -> Tensor:
        """(heads, 2*seq - 1): column ``seq - 1 + r`` holds the bias of relative position r."""
        if self.table.dim() != 2:
            raise ValueError(
                f"position bias table must be (num_buckets, heads), got {tuple(self.table.shape)}"
            )
        rel = torch.arange(1 - seq, seq, device=self.table.device)
        buckets = self.bucket(rel)
        n = self.table.shape[0]
        if buckets.numel() and (int(buckets.min()) < 0 or int(buckets.max()) >= n):
            raise ValueError(f"position buckets fall outside the table's {n} rows")
        return self.table[buckets].transpose(0, 1)

    def dense(self, seq: int) -> Tensor:
        """(heads, seq, seq) full bias (the naive form; quadratic in seq)."""
        return offset_slab(self.by_offset(seq), 0, seq, seq)


def offset_index(r0: int, r1: int, cols: int, seq: int, device: torch.device) -> Tensor:
    """(rows, cols) long index ``seq - 1 + j - i`` of query rows [r0, r1) and keys [0, cols)."""
    i = torch.arange(r0, r1, device=device)[:, None]
    j = torch.arange(cols, device=device)[None, :]
    return j - i + (seq - 1)


def offset_slab(offsets: Tensor, r0: int, r1: int, cols: int) -> Tensor:
    """(heads, rows, cols) bias of query rows [r0, r1) and keys [0, cols) from ``by_offset``
    values ``offsets`` (heads, 2*seq - 1)."""
    seq = (offsets.shape[-1] + 1) // 2
    return offsets[:, offset_index(r0, r1, cols, seq, offsets.device)]
