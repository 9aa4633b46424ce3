"""Sentence embeddings by masked mean pooling (the sentence-transformers convention)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attnkd.losses.features import mean_pool


@torch.no_grad()
def encode(
    model: nn.Module,
    tokenizer,
    sentences: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    normalize: bool = False,
) -> Tensor:
    """Mean-pooled embeddings (n, width), float32 on CPU. Sorts by length to cut padding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = torch.empty(len(sentences), model.config.hidden_size)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [sentences[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
        out[idx] = mean_pool(hidden, enc["attention_mask"]).float().cpu()
    model.train(was_training)
    if normalize:
        out = nn.functional.normalize(out, dim=-1)
    return out
