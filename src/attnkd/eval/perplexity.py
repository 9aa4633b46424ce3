"""Perplexity of a causal language model on fixed-size token blocks.

Every block is scored on its own (no context carried over from the previous block): position t
predicts token t + 1 from tokens 0..t, so a block of L tokens gives L - 1 predictions and its
first token is never predicted. ``ppl = exp(mean NLL)`` over all predictions of all blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from attnkd.errors import AttnkdError


@dataclass
class PerplexityResult:
    ppl: float
    """exp(nll)."""
    nll: float
    """Mean next-token negative log-likelihood in nats."""
    tokens: int
    """Predicted tokens: num_blocks * (block_size - 1)."""


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _block_nll_sum(model: nn.Module, ids: Tensor) -> float:
    """Sum over the batch of the next-token NLLs of ``ids`` (B, L), accumulated in float64."""
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    logits = getattr(out, "logits", None)
    if logits is None:
        raise AttnkdError(f"{type(model).__name__} returned no .logits: not a causal LM")
    if logits.shape[:2] != ids.shape:
        raise AttnkdError(
            f"logits of shape {tuple(logits.shape)} do not match input_ids {tuple(ids.shape)}"
        )
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).to(dtype)
    nll = F.cross_entropy(pred, ids[:, 1:].reshape(-1), reduction="none")
    return float(nll.double().sum())


def perplexity(
    model: nn.Module, blocks: Tensor, batch_size: int = 8, progress: bool = False
) -> PerplexityResult:
    """Mean next-token NLL and perplexity of ``model`` on ``blocks`` (num_blocks, block_size).

    ``model`` is any Hugging Face causal LM (``model(input_ids=, attention_mask=).logits`` of
    shape (B, L, vocab)); it runs in eval mode under ``no_grad`` and every submodule's
    train/eval mode is restored afterwards. Log-softmax in float32 (float64 logits stay float64),
    sums in float64.
    """
    if blocks.dim() != 2 or blocks.shape[0] < 1 or blocks.shape[1] < 2:
        raise AttnkdError(
            f"blocks must be (num_blocks >= 1, block_size >= 2), got {tuple(blocks.shape)}"
        )
    if batch_size < 1:
        raise AttnkdError(f"batch_size must be >= 1, got {batch_size}")
    modes = [(m, m.training) for m in model.modules()]
    device = _device(model)
    total = 0.0
    n = blocks.shape[0]
    try:
        model.eval()
        with torch.no_grad(), tqdm(total=n, desc="perplexity", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                ids = blocks[start : start + batch_size].to(device=device, dtype=torch.long)
                total += _block_nll_sum(model, ids)
                bar.update(ids.shape[0])
    finally:
        for module, training in modes:
            module.training = training
    tokens = n * (blocks.shape[1] - 1)
    nll = total / tokens
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=tokens)
