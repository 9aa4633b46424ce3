"""Forward-hook capture of per-layer q, k, v, context, hidden states and logits (transformers,
:mod:`attnkd.capture.hooks`) and of image models' feature maps (:mod:`attnkd.capture.images`)."""

from attnkd.capture.hooks import KINDS, Capture, Tap, Taps, apply_rope, rotate_half, split_heads
from attnkd.capture.images import VISION_KINDS, FeatureCapture, VisionTap, VisionTaps

__all__ = [
    "KINDS",
    "VISION_KINDS",
    "Capture",
    "FeatureCapture",
    "Tap",
    "Taps",
    "VisionTap",
    "VisionTaps",
    "apply_rope",
    "rotate_half",
    "split_heads",
]
