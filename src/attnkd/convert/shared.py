"""Shared attention (EchoAtt, Rajabzadeh et al. 2024): a later layer reuses the attention
probabilities of an earlier (source) layer and keeps only its own values and output.

``A_src = softmax(q_src k_src^T / sqrt(d))`` (causal and key padding as in the model) is
computed once in the source layer; a sharing layer j gives ``y_j = A_src v_j``. The
probabilities are never materialised: the source publishes its (RoPE-rotated) queries and keys
in a :class:`SharedSlot` and each sharing layer runs fused attention on them with its own
values, which is the same product. A sharing layer has no query or key projection (they are
dropped at conversion: fewer parameters) and, when decoding, caches its values only.

Which layers share is chosen from the similarity analysis (:mod:`attnkd.convert.similarity`,
:meth:`SimilarityTable.choose_sharing`); the shared model is then trained end to end by
distillation (:mod:`attnkd.convert.e2e`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkd.convert.mixer import Mixer
from attnkd.convert.state import MixerState


class SharedSlot:
    """What a source layer publishes in the current forward: q (B, H, S, D), k (B, H_kv, S', D)
    (S' >= S when decoding: every key seen) and the (B, S') key mask, or None."""

    def __init__(self) -> None:
        self.q: Tensor | None = None
        self.k: Tensor | None = None
        self.mask: Tensor | None = None

    def __deepcopy__(self, memo) -> SharedSlot:  # a copied model gets a fresh, empty slot
        return SharedSlot()


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool
) -> Tensor:
    """Fused ``softmax(q k^T / sqrt(d)) v``: q (B, H, T, D), k/v (B, H_kv, S, D) with the T
    queries being the last T of the S positions; key_mask (B, S) bool. A query also sees its
    own position, so padded rows stay finite (they are never read). Returns (B, H, T, Dv)."""
    t, s = q.shape[2], k.shape[2]
    if key_mask is None and (not causal or t == s or t == 1):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal and t > 1, enable_gqa=True)
    rows = torch.arange(s - t, s, device=q.device)[:, None]
    cols = torch.arange(s, device=q.device)[None, :]
    allowed = (cols <= rows) if causal else torch.ones(t, s, dtype=torch.bool, device=q.device)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    allowed = allowed | (cols == rows)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)


class SourceAttention(Mixer):
    """The source layer: its own exact softmax attention, publishing q and k for the layers
    that share it. Decoding keeps its keys and values (a full cache, as the teacher's)."""

    kind = "source"

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, causal: bool) -> None:
        super().__init__(num_heads, num_kv_heads, head_dim, causal)
        self.slot = SharedSlot()

    def options(self) -> dict:
        return {}

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        self.slot.q, self.slot.k, self.slot.mask = q, k, key_mask
        return softmax_attention(q, k, v, key_mask, self.causal)

    def step(self, q, k, v, key_mask, state: MixerState) -> Tensor:
        real = _real(key_mask, q)
        state.push(k, v, real)
        state.seen += q.shape[2]
        self.slot.q, self.slot.k, self.slot.mask = q, state.keys, state.real
        return softmax_attention(q, state.keys, state.values, state.real, True)


class SharedAttention(Mixer):
    """A sharing layer: the source's attention probabilities times its own values."""

    kind = "shared"
    needs_qk = False

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, causal: bool, source: int
    ) -> None:
        super().__init__(num_heads, num_kv_heads, head_dim, causal)
        self.source = source
        self.slot: SharedSlot | None = None  # set by convert_attention (the source's slot)

    def options(self) -> dict:
        return {"source": self.source}

    def _probs_from(self) -> SharedSlot:
        if self.slot is None or self.slot.q is None:
            raise RuntimeError(f"shared attention: source layer {self.source} has not run yet")
        return self.slot

    def forward(self, q, k, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        src = self._probs_from()
        return softmax_attention(src.q, src.k, v, src.mask, self.causal)

    def step(self, q, k, v: Tensor, key_mask, state: MixerState) -> Tensor:
        src = self._probs_from()
        real = _real(key_mask, v)
        state.push(v[..., :0], v, real)  # values only (keys are the source's)
        state.seen += v.shape[2]
        return softmax_attention(src.q, src.k, state.values, src.mask, True)


def _real(key_mask: Tensor | None, x: Tensor) -> Tensor:
    if key_mask is not None:
        return key_mask
    return torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
