"""Linear attention with a learned feature map (Hedgehog, Zhang et al. 2024).

``phi(x) = [softmax(W x), softmax(-W x)]`` per head, W (head_dim x head_dim) initialised to the
identity; ``y_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)`` over allowed keys
(causal: j <= i, by chunk-wise prefix sums; bidirectional: one global sum). Memory O(seq);
decoding keeps ``kv = sum_j phi(k_j) v_j^T`` and ``z = sum_j phi(k_j)`` (:mod:`.state`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkd.convert.mixer import Mixer


class HedgehogFeatureMap(nn.Module):
    """(B, heads, S, D) -> (B, heads, S, 2D): ``[softmax(x W_h^T), softmax(-x W_h^T)]`` per head.

    Non-negative, each half sums to 1 per token; ``weight`` (heads, D, D) starts at the identity.
    """

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(num_heads, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.dim() != 4
            or x.shape[1] != self.weight.shape[0]
            or x.shape[-1] != self.weight.shape[-1]
        ):
            raise ValueError(
                f"feature map of {self.weight.shape[0]} heads x {self.weight.shape[-1]} expects "
                f"(batch, heads, seq, head_dim), got {tuple(x.shape)}"
            )
        y = torch.matmul(x.to(self.weight.dtype), self.weight.transpose(1, 2))
        return torch.softmax(torch.stack([y, -y], dim=-2), -1).flatten(-2)


class LinearAttention(Mixer):
    """Hedgehog linear attention: no window, separate feature maps for queries and keys."""

    kind = "linear"

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, causal: bool, chunk: int = 64
    ) -> None:
        super().__init__(
            num_heads,
            num_kv_heads,
            head_dim,
            causal,
            window=0,
            feature_q=HedgehogFeatureMap(num_heads, head_dim),
            feature_k=HedgehogFeatureMap(num_kv_heads, head_dim),
            chunk=chunk,
        )

    def options(self) -> dict:
        return {"chunk": self.chunk}
