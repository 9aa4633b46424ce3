"""Cheap drafts for speculative decoding: a self-draft and a token-shortlist output layer.

- :func:`self_draft`: the teacher's own first ``k`` layers, then its final norm and output layer.
  It shares every weight with the teacher (no new parameters) but keeps its own KV cache.
- :func:`with_shortlist`: a draft whose output layer scores only a frequency-ranked shortlist of
  token ids (:func:`token_shortlist`), every other token getting probability 0. At batch 1 a
  small model's decoding step is dominated by the tied vocabulary projection (SmolLM2: 49,152 x
  576), so a shortlist of a few thousand tokens cuts the draft's cost. Verification by the
  teacher stays exact: the rejection rule's residual ``max(0, p - q)`` covers every token the
  draft cannot propose, so the output distribution is the teacher's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from attnkd.errors import AttnkdError, ConfigError
from attnkd.models.adapters import adapter_for, base_model


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object sharing parameters, buffers and submodules with ``module``; its own
    submodule table, so replacing a child on the copy leaves the original alone."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    return twin


def self_draft(teacher: nn.Module, num_layers: int) -> nn.Module:
    """The teacher's first ``num_layers`` layers + its final norm and LM head, weights shared.

    ``teacher`` is a Hugging Face causal LM of a registered decoder family (Llama, GPT-2). The
    draft is a shallow copy with its own config (``num_hidden_layers = num_layers``) and layer
    list; the teacher object itself is not modified.
    """
    try:
        adapter = adapter_for(teacher)
    except ValueError as err:
        raise AttnkdError(f"cannot build a self-draft: {err}") from None
    if not adapter.causal:
        raise AttnkdError(f"cannot build a self-draft of the encoder family '{adapter.family}'")
    total = int(teacher.config.num_hidden_layers)
    if not 1 <= num_layers < total:
        raise ConfigError(
            "draft",
            f"a self-draft keeps 1..{total - 1} of the teacher's {total} layers, not {num_layers}",
        )
    prefix = teacher.base_model_prefix
    base = base_model(teacher)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:num_layers]
    new_base = _shallow(base)
    layers: nn.ModuleList = getattr(base, adapter.layers)
    setattr(new_base, adapter.layers, nn.ModuleList(list(layers)[:num_layers]))
    new_base.config = config
    draft = _shallow(teacher)
    setattr(draft, prefix, new_base)
    draft.config = config
    return draft


def token_shortlist(
    ids: np.ndarray | Tensor | Sequence[int],
    size: int,
    vocab_size: int,
    always: Sequence[int] = (),
) -> Tensor:
    """The ``size`` most frequent token ids of the stream ``ids`` (ties: smaller id first), plus
    every id in ``always`` (e.g. the eos id), sorted ascending; int64 tensor."""
    flat = torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(-1)
    if size < 1:
        raise AttnkdError(f"shortlist size must be >= 1, got {size}")
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= vocab_size):
        raise AttnkdError(f"token ids must lie in [0, {vocab_size}) to build a shortlist")
    counts = torch.bincount(flat, minlength=vocab_size).double()
    # Stable descending sort on count: equal counts keep ascending id order.
    order = torch.sort(counts, descending=True, stable=True).indices[: min(size, vocab_size)]
    keep = set(order.tolist()) | {int(a) for a in always}
    bad = [a for a in keep if not 0 <= a < vocab_size]
    if bad:
        raise AttnkdError(f"shortlist ids {bad} lie outside the vocabulary [0, {vocab_size})")
    return torch.tensor(sorted(keep), dtype=torch.long)


class ShortlistHead(nn.Module):
    """Output layer restricted to ``token_ids``: logits of the full vocabulary width with the
    shortlisted entries computed from the rows of the original weight and -inf elsewhere.

    The rows (and bias) are copied once into buffers, so the matmul reads ``len(token_ids)`` rows
    instead of the whole vocabulary. Shapes: hidden (..., d) -> logits (..., vocab_size).
    """

    def __init__(self, head: nn.Linear, token_ids: Tensor):
        super().__init__()
        ids = token_ids.to(device=head.weight.device, dtype=torch.long)
        self.vocab_size = head.weight.shape[0]
        if ids.numel() < 1 or int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise AttnkdError(f"shortlist ids must be a non-empty subset of [0, {self.vocab_size})")
        self.register_buffer("token_ids", ids)
        self.register_buffer("weight", head.weight.detach()[ids].clone())
        bias = getattr(head, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach()[ids].clone())
        self.packed: nn.Module | None = None
        """Set by :func:`attnkd.eval.cpu_linear.pack_linears`: the same rows, pre-packed."""

    def forward(self, hidden: Tensor) -> Tensor:
        if self.packed is not None:
            short = self.packed(hidden)
        else:
            short = nn.functional.linear(hidden, self.weight, self.bias)
        out = short.new_full((*short.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.token_ids, short)


class SubsetHead(nn.Module):
    """Output layer scoring only ``token_ids``: logits of width ``len(token_ids)`` (column j is
    token ``token_ids[j]``). For training a shortlist draft: a softmax over these logits is the
    draft's distribution on the shortlist. Rows are copied into buffers (not trained).
    Shapes: hidden (..., d) -> logits (..., len(token_ids)).
    """

    def __init__(self, head: nn.Linear, token_ids: Tensor):
        super().__init__()
        ids = token_ids.to(device=head.weight.device, dtype=torch.long)
        vocab = head.weight.shape[0]
        if ids.numel() < 1 or int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise AttnkdError(f"shortlist ids must be a non-empty subset of [0, {vocab})")
        self.register_buffer("token_ids", ids)
        self.register_buffer("weight", head.weight.detach()[ids].clone())
        bias = getattr(head, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach()[ids].clone())

    def forward(self, hidden: Tensor) -> Tensor:
        return nn.functional.linear(hidden, self.weight, self.bias)


def shortlist_targets(ids: Tensor, token_ids: Tensor, vocab_size: int) -> Tensor:
    """Token ids (any shape) -> their column in a :class:`SubsetHead` on ``token_ids``, or
    -100 (``cross_entropy``'s ignore index) for tokens outside the shortlist."""
    where = torch.full((vocab_size,), -100, dtype=torch.long, device=ids.device)
    where[token_ids.to(ids.device)] = torch.arange(len(token_ids), device=ids.device)
    return where[ids]


def with_subset_head(model: nn.Module, token_ids: Tensor) -> nn.Module:
    """A shallow copy of ``model`` whose ``lm_head`` is a :class:`SubsetHead` on ``token_ids``
    (logits of the shortlist only); ``model`` keeps its head and shares every other weight."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        raise AttnkdError(f"{type(model).__name__} has no nn.Linear lm_head to restrict")
    twin = _shallow(model)
    twin.lm_head = SubsetHead(head, token_ids)
    return twin


def with_shortlist(draft: nn.Module, token_ids: Tensor) -> nn.Module:
    """A shallow copy of ``draft`` whose ``lm_head`` is a :class:`ShortlistHead` on
    ``token_ids``; ``draft`` itself keeps its full head."""
    head = getattr(draft, "lm_head", None)
    if not isinstance(head, nn.Linear):
        raise AttnkdError(f"{type(draft).__name__} has no nn.Linear lm_head to restrict")
    twin = _shallow(draft)
    twin.lm_head = ShortlistHead(head, token_ids)
    return twin


def parse_draft_spec(spec: str) -> tuple[str, int]:
    """``'self:K'`` -> ``('self', K)``; anything else is a model name or folder: ``(spec, 0)``."""
    kind, sep, arg = spec.partition(":")
    if kind == "self" and sep:
        if not arg.isdigit() or int(arg) < 1:
            raise ConfigError("draft", f"'self:K' needs a layer count K >= 1, got {spec!r}")
        return "self", int(arg)
    return spec, 0
