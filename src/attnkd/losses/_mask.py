"""Masking and reduction helpers shared by every loss (the only place they exist).

Conventions: ``mask`` is (batch, seq) bool, True = real token. Attention-style losses mask
keys (a padded key gets probability 0) and query rows (a padded row is excluded from the mean).
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_mask(mask: Tensor | None, batch: int, seq: int) -> Tensor | None:
    """Validate and convert a (batch, seq) mask to bool."""
    if mask is None:
        return None
    if mask.shape != (batch, seq):
        raise ValueError(f"mask must be (batch, seq)=({batch}, {seq}), got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def allowed_keys(
    mask: Tensor | None, seq: int, causal: bool, device: torch.device, rows: slice | None = None
) -> Tensor | None:
    """Boolean (batch|1, 1, rows, seq) tensor of keys each query row may attend to.

    Returns None when every key is allowed (no mask, not causal).
    ``rows`` restricts the query rows (for block-wise computation).
    """
    r0, r1 = (0, seq) if rows is None else (rows.start, rows.stop)
    out = None
    if mask is not None:
        out = mask[:, None, None, :]  # (B, 1, 1, S)
    if causal:
        qi = torch.arange(r0, r1, device=device)[:, None]
        kj = torch.arange(seq, device=device)[None, :]
        tri = (kj <= qi)[None, None]  # (1, 1, R, S)
        out = tri if out is None else (out & tri)
    return out


def row_weights(mask: Tensor | None, batch: int, seq: int, device: torch.device) -> Tensor:
    """(batch, seq) float weights: 1 for real query rows, 0 for padding."""
    if mask is None:
        return torch.ones(batch, seq, device=device)
    return mask.to(torch.float32)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` (batch, [heads,] seq) over real positions; 0 when nothing is real.

    With a mask, padded positions never contribute (even if they hold NaN/inf, they are
    replaced before the sum) and an all-padding batch gives 0, not NaN.
    """
    if mask is None:
        return values.mean()
    m = mask.to(torch.bool)
    if values.dim() == 3:  # (B, H, S)
        m = m[:, None, :].expand_as(values)
    elif values.dim() != 2:
        raise ValueError(f"values must be (B, S) or (B, H, S), got {tuple(values.shape)}")
    total = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    count = m.sum().clamp_min(1)
    return total / count
