"""Capture per-layer q, k, v, attention context, hidden states by forward hooks.

Hooks are keyed by module path (from the model-family adapter), installed only for what the
losses ask for, and removed when the ``with`` block exits. Because q/k/v are read from the
projection modules' outputs, capture works the same on fused (SDPA) and eager attention; no
attention probabilities are ever materialised here: losses build them from q/k when needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnkd.models.adapters import FamilyAdapter, adapter_for, base_model, resolve_layer

KINDS = ("q", "k", "v", "context", "hidden", "embeddings", "logits")
"""q/k/v: projection outputs (batch, seq, heads*head_dim); context: per-head attention output
concatenated, before the output projection (batch, seq, width), read as that projection's input
(MPNet's attention module applies the projection itself); hidden: the block's output
(batch, seq, width); embeddings: the embedding module's output (layer index ignored, use 0);
logits: the output embedding's (LM head's) output (batch, seq, vocab) (layer ignored, use 0)."""


@dataclass(frozen=True)
class Tap:
    """One thing to capture: ``kind`` at ``layer`` (non-negative index)."""

    kind: str
    layer: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown tap kind '{self.kind}'; expected one of {KINDS}")


@dataclass
class Taps:
    """Captured tensors of one forward pass, looked up by ``(kind, layer)``."""

    tensors: dict[Tap, Tensor] = field(default_factory=dict)

    def get(self, kind: str, layer: int = 0) -> Tensor:
        key = Tap(kind, layer)
        if key not in self.tensors:
            have = ", ".join(f"{t.kind}@{t.layer}" for t in self.tensors) or "nothing"
            raise KeyError(f"{kind}@{layer} was not captured (captured: {have})")
        return self.tensors[key]

    def clear(self) -> None:
        self.tensors.clear()


def _first(output) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


class Capture:
    """Context manager installing forward hooks for the requested taps.

    >>> with Capture(model, [Tap("q", 5), Tap("k", 5)]) as cap:
    ...     model(**batch)
    >>> q = cap.taps.get("q", 5)          # (batch, seq, heads*head_dim)
    """

    def __init__(self, model: nn.Module, taps: Iterable[Tap], adapter: FamilyAdapter | None = None):
        self.model = model
        self.adapter = adapter or adapter_for(model)
        self.base = base_model(model)
        n = int(model.config.num_hidden_layers)
        self.requests = sorted(
            {Tap(t.kind, resolve_layer(t.layer, n, f"{t.kind} tap")) for t in taps},
            key=lambda t: (t.layer, t.kind),
        )
        self.taps = Taps()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def module_path(self, tap: Tap) -> str:
        a = self.adapter
        template = {
            "q": a.query,
            "k": a.key,
            "v": a.value,
            "context": a.attention_output,
            "hidden": a.layers + ".{i}",
            "embeddings": a.embeddings,
        }[tap.kind]
        return template.format(i=tap.layer)

    def __enter__(self) -> Capture:
        try:
            for tap in self.requests:
                module = self.base.get_submodule(self.module_path(tap))
                if tap.kind == "context":  # the output projection's input
                    handle = module.register_forward_pre_hook(self._pre_hook(tap))
                else:
                    handle = module.register_forward_hook(self._hook(tap))
                self._handles.append(handle)
        except BaseException:  # __exit__ does not run when __enter__ fails
            self.remove()
            raise
        return self

    def _hook(self, tap: Tap):
        def fn(_module, _inputs, output):
            self.taps.tensors[tap] = _first(output)

        return fn

    def _pre_hook(self, tap: Tap):
        def fn(_module, inputs):
            self.taps.tensors[tap] = inputs[0]

        return fn

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(batch, seq, heads*dim) -> (batch, heads, seq, dim) as a view."""
    b, s, w = x.shape
    if w % num_heads:
        raise ValueError(f"width {w} is not divisible by {num_heads} heads")
    return x.view(b, s, num_heads, w // num_heads).transpose(1, 2)
