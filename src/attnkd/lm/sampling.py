"""Batched ancestral sampling from a causal LM (KV cache), and scoring of what was sampled.

Used to make teacher text (sequence-level KD) and student samples (DPO pairs). Every row of a
batch starts from a prompt of the same length and gets exactly ``new_tokens`` tokens: an
end-of-text token is kept like any other (no early stop), so rows stay aligned.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from attnkd.errors import AttnkdError

__all__ = ["continuation_logprobs", "pick_next", "sample_continuations"]


def pick_next(
    logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> Tensor:
    """Next token per row of (batch, vocab) logits: argmax at temperature 0, else a draw from
    softmax(logits / T) restricted to the smallest set of tokens whose mass reaches ``top_p``
    (nucleus; 1 = the whole vocabulary)."""
    if temperature == 0:
        return logits.argmax(-1)
    p = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = p.sort(dim=-1, descending=True)
        drop = (sp.cumsum(-1) - sp) >= top_p  # tokens after the mass reached top_p
        sp = sp.masked_fill(drop, 0.0)
        p = torch.zeros_like(p).scatter(-1, si, sp)
    return torch.multinomial(p, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    prompts: Tensor,
    new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(batch, new_tokens) int64 tokens sampled after ``prompts`` (batch, P >= 1).

    ``model`` runs in eval mode (its mode is restored); the draw uses ``generator`` (CPU) so
    the result depends only on the model, the prompts, the settings and the generator state.
    """
    from transformers import DynamicCache

    if prompts.dim() != 2 or prompts.shape[1] < 1:
        raise AttnkdError(f"prompts must be (batch, length >= 1), got {tuple(prompts.shape)}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise AttnkdError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    cache = DynamicCache()
    ids = prompts.to(device)
    out: list[Tensor] = []
    try:
        for _ in range(new_tokens):
            logits = model(input_ids=ids, use_cache=True, **{cache_arg: cache}).logits[:, -1]
            nxt = pick_next(logits.cpu(), temperature, top_p, generator)
            out.append(nxt)
            ids = nxt[:, None].to(device)
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(prompts.shape[0], 0, dtype=torch.long)
    return torch.stack(out, dim=1)


@torch.no_grad()
def continuation_logprobs(model: nn.Module, prompts: Tensor, continuations: Tensor) -> Tensor:
    """Per-token log-probs (batch, C) that ``model`` gives ``continuations`` after ``prompts``
    (one forward over the concatenation; float32)."""
    from attnkd.losses.dpo import token_logprobs

    ids = torch.cat((prompts, continuations), dim=1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids.to(device)).logits
    finally:
        model.train(was_training)
    return token_logprobs(logits, ids.to(device))[:, prompts.shape[1] - 1 :].float().cpu()
