"""Cross-entropy of a causal LM's next-token predictions with the data's tokens.

The non-distillation baseline a draft is compared with (same model, same budget, no teacher):
``-mean log softmax(z_t)[x_{t+1}]`` over positions t whose own token and next token are real.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnkd.losses._mask import check_mask


def next_token_ce(logits: Tensor, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean next-token cross-entropy (float32 scalar).

    Shapes: logits (batch, seq, vocab), input_ids (batch, seq) int64, mask (batch, seq) bool
    (True = real token). Position t predicts ``input_ids[:, t + 1]`` and counts when both t and
    t + 1 are real; a target of -inf logit (a token a shortlist head cannot produce) gives inf.
    """
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"logits (batch, seq, vocab) and input_ids (batch, seq) must agree, got "
            f"{tuple(logits.shape)} and {tuple(input_ids.shape)}"
        )
    b, s, v = logits.shape
    mask = check_mask(mask, b, s)
    keep = None if mask is None else (mask[:, :-1] & mask[:, 1:]).reshape(-1)
    z = logits[:, :-1].reshape(-1, v).float()
    y = input_ids[:, 1:].reshape(-1)
    if keep is not None:
        z, y = z[keep], y[keep]
    if y.numel() == 0:
        return logits.sum() * 0.0  # no pair to score: zero with a gradient path
    return F.cross_entropy(z, y)
