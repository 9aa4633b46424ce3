"""Ensemble targets: several teachers as one virtual teacher (MEAL V2, Shen & Savvides 2020).

The ensemble's class distribution is the (weighted) mean of the teachers' *probabilities*, not of
their logits; its features and embeddings are the (weighted) mean of the teachers'. Weights are
normalised to sum to 1. All functions are pure and detach nothing themselves: teachers run under
``torch.no_grad()`` already.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ensemble_logits", "ensemble_mean", "ensemble_probs", "normalise_weights"]


def normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``n`` weights summing to 1 (equal when ``weights`` is None); each must be >= 0 and at
    least one > 0."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} teachers")
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"teacher weights must be finite, >= 0 and not all 0, got {weights}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def _check_same_shape(tensors: Sequence[Tensor], what: str) -> None:
    if not tensors:
        raise ValueError(f"an ensemble needs at least one teacher's {what}")
    shape = tensors[0].shape
    for i, x in enumerate(tensors[1:], start=1):
        if x.shape != shape:
            raise ValueError(
                f"teacher {i}'s {what} has shape {tuple(x.shape)}, teacher 0's {tuple(shape)}: "
                "an ensemble averages tensors of one shape"
            )


def ensemble_probs(
    logits: Sequence[Tensor], weights: Sequence[float] | None = None, temperature: float = 1.0
) -> Tensor:
    """``p̄ = Σ_i w_i softmax(z_i / τ)`` over the last dimension.

    Shapes: each ``logits[i]`` (..., classes), all one shape; returns (..., classes) float32 (or
    float64 for float64 inputs), rows summing to 1.
    """
    _check_same_shape(logits, "logits")
    w = normalise_weights(weights, len(logits))
    dtype = torch.float64 if logits[0].dtype == torch.float64 else torch.float32
    out = torch.zeros(logits[0].shape, dtype=dtype, device=logits[0].device)
    for wi, z in zip(w, logits, strict=True):
        out = out + wi * torch.softmax(z.to(dtype) / temperature, dim=-1)
    return out


def ensemble_logits(
    logits: Sequence[Tensor], weights: Sequence[float] | None = None, temperature: float = 1.0
) -> Tensor:
    """Logits ``z̄`` of the ensemble at temperature τ: ``softmax(z̄ / τ) = Σ_i w_i softmax(z_i / τ)``.

    ``z̄ = τ · log p̄`` (:func:`ensemble_probs`), so any loss that applies ``softmax(· / τ)`` to
    teacher logits (Hinton KD, token divergences) sees exactly the mean of the tempered teacher
    probabilities. Shapes as :func:`ensemble_probs`. A class every teacher gives probability 0
    gets ``-inf`` (read as probability 0 by the logit losses).
    """
    return temperature * torch.log(ensemble_probs(logits, weights, temperature))


def ensemble_mean(tensors: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """``Σ_i w_i x_i``: the ensemble's features or embeddings (all one shape, e.g. (B, D) or
    (B, L, D) over one tokenisation)."""
    _check_same_shape(tensors, "features")
    w = normalise_weights(weights, len(tensors))
    out = w[0] * tensors[0]
    for wi, x in zip(w[1:], tensors[1:], strict=True):
        out = out + wi * x
    return out
