"""Sliding-window softmax attention (CLEAR-style local attention) with banded compute.

Query i attends to keys ``i - w < j <= i`` (causal) or ``|i - j| < w`` (bidirectional) with the
teacher's own softmax, exactly. Queries are taken in chunks against their key band only, never
a masked (seq x seq) matrix; decoding keeps the last ``w`` keys and values. No new parameters:
the converted layer is the teacher's layer with its attention cut to the window.
"""

from __future__ import annotations

from attnkd.convert.mixer import Mixer


class WindowAttention(Mixer):
    """Softmax over a sliding window of ``window`` keys (per side when bidirectional)."""

    kind = "window"

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
            chunk=chunk or window,
            terrace=terrace,
            sinks=sinks,
        )
