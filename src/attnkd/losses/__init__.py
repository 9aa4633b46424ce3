"""Distillation losses: pure tensor functions (see METHODS.md).

Public API (stable names): ``attention_kl``, ``relation_kl``, ``token_divergence`` and the
other functions re-exported below.
"""
