"""Forward-hook capture of per-layer q, k, v, context, hidden states and logits."""

from attnkd.capture.hooks import KINDS, Capture, Tap, Taps, apply_rope, rotate_half, split_heads

__all__ = ["KINDS", "Capture", "Tap", "Taps", "apply_rope", "rotate_half", "split_heads"]
