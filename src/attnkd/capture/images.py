"""Capture image models' feature maps, embeddings, q/k/v and head outputs by module path.

The same scoped-forward-hook mechanism as :mod:`attnkd.capture.hooks`, keyed by the paths each
image model declares (``model.tap_path(kind, layer)``) instead of a transformer family adapter.
Kinds: ``fmap`` (a CNN stage's or ViT block's output: (B, C, H, W) or (B, N, D)), ``group``
(a CNN stage's last conv-norm-ReLU output, before the stage's pooling), ``embedding``
(the input of the classifier head, (B, D)), ``logits`` (B, classes), ``dist_logits`` (the ViT
distillation head), ``q``/``k``/``v`` (ViT projections, (B, N, D)). Hooks are removed when the
``with`` block exits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnkd.models.adapters import resolve_layer

VISION_KINDS = ("fmap", "group", "embedding", "logits", "dist_logits", "q", "k", "v")


@dataclass(frozen=True)
class VisionTap:
    """One thing to capture: ``kind`` at ``layer`` (stage or block index; heads ignore it)."""

    kind: str
    layer: int = 0

    def __post_init__(self):
        if self.kind not in VISION_KINDS:
            raise ValueError(f"unknown tap kind '{self.kind}'; expected one of {VISION_KINDS}")


@dataclass
class VisionTaps:
    """Captured tensors of one forward pass, looked up by ``(kind, layer)``."""

    tensors: dict[tuple[str, int], Tensor] = field(default_factory=dict)

    def get(self, kind: str, layer: int = 0) -> Tensor:
        if (kind, layer) not in self.tensors:
            have = ", ".join(f"{k}@{i}" for k, i in self.tensors) or "nothing"
            raise KeyError(f"{kind}@{layer} was not captured (captured: {have})")
        return self.tensors[(kind, layer)]

    def clear(self) -> None:
        self.tensors.clear()


class FeatureCapture:
    """Context manager installing forward hooks for the requested taps on an image model.

    >>> with FeatureCapture(cnn, [VisionTap("fmap", 1)]) as cap:
    ...     cnn(x)
    >>> cap.taps.get("fmap", 1)          # (B, C, H, W)
    """

    def __init__(self, model: nn.Module, taps: Iterable):
        self.model = model
        n = int(model.config.num_hidden_layers)
        self.requests = sorted(
            {(t.kind, 0 if t.kind in _HEADS else resolve_layer(t.layer, n, f"{t.kind} tap"))
             for t in taps}
        )  # fmt: skip
        self.taps = VisionTaps()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for kind, layer in self.requests:  # fail here, not at the first forward
            model.get_submodule(model.tap_path(kind, layer))

    def __enter__(self) -> FeatureCapture:
        try:
            for kind, layer in self.requests:
                module = self.model.get_submodule(self.model.tap_path(kind, layer))
                if kind == "embedding":  # the head's input
                    h = module.register_forward_pre_hook(self._pre_hook((kind, layer)))
                else:
                    h = module.register_forward_hook(self._hook((kind, layer)))
                self._handles.append(h)
        except BaseException:
            self.remove()
            raise
        return self

    def _hook(self, key):
        def fn(_module, _inputs, output):
            self.taps.tensors[key] = output

        return fn

    def _pre_hook(self, key):
        def fn(_module, inputs):
            self.taps.tensors[key] = inputs[0]

        return fn

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


_HEADS = ("embedding", "logits", "dist_logits")
