"""Masked student inputs for DMAE feature distillation (``data.mask_ratio``).

Each training batch gets ``student_input_ids`` (the row with a share of its tokens replaced by
the tokenizer's mask token) and ``masked_tokens`` (which ones); the teacher keeps the whole
``input_ids``. Which tokens are masked depends only on (seed, batch position), so a resumed run
masks exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnkd.errors import AttnkdError

__all__ = ["MaskedTokens", "TokenMasker", "mask_tokens"]


@dataclass
class MaskedTokens:
    """``input_ids`` with the chosen tokens replaced, and ``masked`` (True = replaced)."""

    input_ids: Tensor
    masked: Tensor


def mask_tokens(
    input_ids: Tensor, maskable: Tensor, ratio: float, mask_id: int, generator: torch.Generator
) -> MaskedTokens:
    """Replace ``round(ratio * n)`` of each row's ``n`` maskable tokens (at least one when
    ``n > 0`` and ``ratio > 0``), chosen uniformly without replacement, by ``mask_id``.

    Shapes: input_ids, maskable (batch, seq); maskable is bool (real, non-special tokens).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    scores = torch.rand(input_ids.shape, generator=generator)
    scores = scores.masked_fill(~maskable.cpu(), 2.0)  # never picked before a maskable token
    n = maskable.sum(1).cpu()
    k = torch.where(n > 0, (n.double() * ratio).round().long().clamp_min(1 if ratio else 0), 0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # each token's place in its row's random order
    masked = (rank < k[:, None]) & maskable.cpu()
    out = input_ids.clone()
    out[masked.to(out.device)] = mask_id
    return MaskedTokens(out, masked.to(input_ids.device))


class TokenMasker:
    """Adds ``student_input_ids`` and ``masked_tokens`` to a padded batch (``input_ids``,
    ``attention_mask``) at a given batch position; special tokens and padding are never masked."""

    def __init__(self, tokenizer, ratio: float, seed: int):
        if tokenizer.mask_token_id is None:
            raise AttnkdError(
                f"data.mask_ratio needs a tokenizer with a mask token; {type(tokenizer).__name__} "
                "has none"
            )
        self.ratio, self.seed = ratio, seed
        self.mask_id = int(tokenizer.mask_token_id)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def __call__(self, batch: dict[str, Tensor], position: int) -> dict[str, Tensor]:
        ids = batch["input_ids"]
        maskable = batch["attention_mask"].bool() & ~torch.isin(ids, self.special)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
        m = mask_tokens(ids, maskable, self.ratio, self.mask_id, g)
        return {**batch, "student_input_ids": m.input_ids, "masked_tokens": m.masked}
