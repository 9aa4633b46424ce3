"""Capture per-layer q, k, v, attention context, hidden states by forward hooks.

Hooks are keyed by module path (from the model-family adapter), installed only for what the
losses ask for, and removed when the ``with`` block exits. Because q/k/v are read from the
projection modules' outputs, capture works the same on fused (SDPA) and eager attention; no
attention probabilities are ever materialised here: losses build them from q/k when needed.

Relative-position bias (MPNet): the attention adds ``table[bucket(j - i)]`` to its scores; the
'position_bias' tap records that table when the model looks it up, and losses and maps add it.

Rotary families (Llama, RoFormer, Su et al. 2021): the attention rotates q and k after the
projections, so the projection outputs alone are not what it attends with. A forward pre-hook
on the attention module keeps the ``position_embeddings`` (cos, sin) it is called with, and the
q/k hooks apply the same rotation in our own code; the captured q/k are then exactly the
attention's inputs, still in the (batch, seq, heads*head_dim) layout and differentiable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnkd.errors import AttnkdError
from attnkd.models.adapters import FamilyAdapter, adapter_for, base_model, resolve_layer

KINDS = ("q", "k", "v", "context", "hidden", "embeddings", "logits", "position_bias", "input_ids")
"""q/k/v: projection outputs (batch, seq, heads*head_dim), q/k after rotary embedding in rope
families, k/v with kv_heads*head_dim under grouped-query attention; context: per-head attention
output concatenated, before the output projection (batch, seq, width), read as that projection's
input (MPNet's attention module applies the projection itself); hidden: the block's output
(batch, seq, width); embeddings: the embedding module's output (layer index ignored, use 0);
logits: the output embedding's (LM head's) output (batch, seq, vocab) (layer ignored, use 0);
position_bias: the (num_buckets, heads) relative-position bias table that layer's attention adds
to its scores (MPNet; one table shared by all layers), recorded when the model uses it: the
parameter itself while grad mode is on, detached otherwise (see
:mod:`attnkd.losses.position_bias`); input_ids: the token ids (batch, seq) the input embedding
module was called with (layer ignored, use 0), for losses on the data's next tokens."""


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


def rotate_half(x: Tensor) -> Tensor:
    """(..., d) -> (..., d): ``[x1, x2] -> [-x2, x1]`` over the two halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of a projection output in its flat layout (RoFormer, Su et al. 2021).

    ``x``: (batch, seq, heads*head_dim); ``cos``, ``sin``: (batch or 1, seq, head_dim) as a
    Hugging Face rotary module returns them. Returns ``x*cos + rotate_half(x)*sin`` per head,
    shape of ``x``.
    """
    b, s, w = x.shape
    d = cos.shape[-1]
    if cos.shape[-2] != s or w % d:
        raise ValueError(
            f"rotary cos/sin of shape {tuple(cos.shape)} do not fit a projection of shape "
            f"{tuple(x.shape)} (expected (.., {s}, head_dim) with head_dim dividing {w})"
        )
    xh = x.view(b, s, w // d, d)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    return (xh * cos + rotate_half(xh) * sin).reshape(b, s, w)


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
        self._rope: dict[int, tuple[Tensor, Tensor]] = {}
        """Per layer: the (cos, sin) its attention was last called with (rope families)."""
        if any(t.kind == "logits" for t in self.requests):
            _output_embeddings_path(model)  # fail here, not at the first forward
        for t in self.requests:
            if t.kind == "position_bias":
                self.module_path(t)  # fail here for a family without one

    def module_path(self, tap: Tap) -> str:
        """Dotted path of the hooked module, relative to the base model ('logits': top level)."""
        if tap.kind == "logits":
            return _output_embeddings_path(self.model)
        if tap.kind == "input_ids":
            return _input_embeddings_path(self.model)
        a = self.adapter
        template = {
            "q": a.query,
            "k": a.key,
            "v": a.value,
            "context": a.attention_output,
            "hidden": a.layers + ".{i}",
            "embeddings": a.embeddings,
            "position_bias": a.position_bias,
        }[tap.kind]
        if template is None:
            raise AttnkdError(
                f"a '{tap.kind}' tap needs a model family whose attention adds a "
                f"relative-position bias; '{a.family}' has none"
            )
        return template.format(i=tap.layer)

    def _rotated(self, tap: Tap) -> bool:
        return self.adapter.rope and tap.kind in ("q", "k")

    def __enter__(self) -> Capture:
        try:
            rope_layers = sorted({t.layer for t in self.requests if self._rotated(t)})
            for i in rope_layers:
                attention = self.base.get_submodule(self.adapter.path(self.adapter.attention, i))
                handle = attention.register_forward_pre_hook(self._rope_hook(i), with_kwargs=True)
                self._handles.append(handle)
            for tap in self.requests:
                root = self.model if tap.kind in ("logits", "input_ids") else self.base
                module = root.get_submodule(self.module_path(tap))
                if tap.kind in ("context", "input_ids"):  # the module's first input
                    handle = module.register_forward_pre_hook(self._pre_hook(tap))
                elif self._rotated(tap):
                    handle = module.register_forward_hook(self._rope_tap_hook(tap))
                elif tap.kind == "position_bias":
                    handle = module.register_forward_hook(self._table_hook(tap))
                elif self.adapter.fused_qkv and tap.kind in ("q", "k", "v"):
                    handle = module.register_forward_hook(self._fused_hook(tap))
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

    def _table_hook(self, tap: Tap):
        """The looked-up embedding's weight (num_buckets, heads), as the forward used it."""

        def fn(module, _inputs, _output):
            w = module.weight
            self.taps.tensors[tap] = w if torch.is_grad_enabled() else w.detach()

        return fn

    def _fused_hook(self, tap: Tap):
        """q, k or v as a view of one fused projection's output [q | k | v]."""
        part = ("q", "k", "v").index(tap.kind)

        def fn(_module, _inputs, output):
            out = _first(output)
            if out.shape[-1] % 3:
                raise AttnkdError(
                    f"{tap.kind}@{tap.layer}: fused q/k/v output of width {out.shape[-1]} "
                    "does not split into three equal parts"
                )
            w = out.shape[-1] // 3
            self.taps.tensors[tap] = out[..., part * w : (part + 1) * w]

        return fn

    def _rope_hook(self, layer: int):
        """Pre-hook on layer ``layer``'s attention: keep the (cos, sin) it is called with."""
        path = self.adapter.path(self.adapter.attention, layer)

        def fn(_module, args, kwargs):
            pe = kwargs.get("position_embeddings")
            if pe is None and len(args) > 1:  # (hidden_states, position_embeddings, ...)
                pe = args[1]
            if pe is None:
                raise AttnkdError(
                    f"attention module '{path}' was called without position_embeddings "
                    f"(cos, sin); cannot rotate captured q/k of a '{self.adapter.family}' model"
                )
            self._rope[layer] = (pe[0], pe[1])

        return fn

    def _rope_tap_hook(self, tap: Tap):
        def fn(_module, _inputs, output):
            if tap.layer not in self._rope:
                raise AttnkdError(
                    f"{tap.kind}@{tap.layer}: its projection ran outside the attention module, "
                    f"so no rotary position embeddings are known"
                )
            cos, sin = self._rope[tap.layer]
            self.taps.tensors[tap] = apply_rope(_first(output), cos, sin)

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
        self._rope.clear()


def _output_embeddings_path(model: nn.Module) -> str:
    """Dotted path of ``model.get_output_embeddings()`` (the LM head), or AttnkdError."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise AttnkdError(
            f"a 'logits' tap needs a model with output embeddings (an LM head); "
            f"{type(model).__name__} has none"
        )
    for name, module in model.named_modules():
        if module is head:
            return name
    raise AttnkdError(f"the output embeddings of {type(model).__name__} are not its submodule")


def _input_embeddings_path(model: nn.Module) -> str:
    """Dotted path of ``model.get_input_embeddings()`` (the token embedding), or AttnkdError."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    for name, module in model.named_modules() if emb is not None else ():
        if module is emb:
            return name
    raise AttnkdError(f"an 'input_ids' tap needs a token embedding module; {type(model).__name__} "
                      "has none")  # fmt: skip


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(batch, seq, heads*dim) -> (batch, heads, seq, dim) as a view."""
    b, s, w = x.shape
    if w % num_heads:
        raise ValueError(f"width {w} is not divisible by {num_heads} heads")
    return x.view(b, s, num_heads, w // num_heads).transpose(1, 2)
