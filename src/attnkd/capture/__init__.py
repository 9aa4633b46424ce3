"""Forward-hook capture of per-layer q, k, v, context and hidden states."""

from attnkd.capture.hooks import KINDS, Capture, Tap, Taps, split_heads

__all__ = ["KINDS", "Capture", "Tap", "Taps", "split_heads"]
