"""Hybrid window + linear attention (LoLCATs, Zhang et al. 2025) with one normaliser.

For query i, keys in the window get ``gamma_h * exp(q_i.k_j / sqrt(d))`` and all older keys get
``phi(q_i).phi(k_j)`` (Hedgehog feature maps, :mod:`.linear`); one denominator covers both:
``y_i = (sum_win gamma exp(.) v_j + phi(q_i)^T S) / (sum_win gamma exp(.) + phi(q_i)^T z)``
with S, z the linear sums of the keys that left the window (METHODS.md section 5).

Where this differs from the LoLCATs reference code: that code subtracts the window's row
maximum inside the exponential but not from the linear part, so its mix of the two parts
depends on the maximum score. Here both parts are scaled by the same ``exp(-m_i)``, which
cancels: the output is exactly the formula above. ``gamma_h = exp(log_gamma_h)``, init 1.
"""

from __future__ import annotations

from attnkd.convert.linear import HedgehogFeatureMap
from attnkd.convert.mixer import Mixer


class HybridAttention(Mixer):
    """Window softmax for the last ``window`` keys, learned linear attention for the rest."""

    kind = "hybrid"

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        causal: bool,
        window: int = 64,
        chunk: int | None = None,
        terrace: bool = False,
        sinks: int = 0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        super().__init__(
            num_heads,
            num_kv_heads,
            head_dim,
            causal,
            window=window,
            feature_q=HedgehogFeatureMap(num_heads, head_dim),
            feature_k=HedgehogFeatureMap(num_kv_heads, head_dim),
            learn_gamma=True,
            chunk=chunk or window,
            terrace=terrace,
            sinks=sinks,
        )
