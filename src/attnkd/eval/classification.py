"""Classification metrics and batched prediction for sequence classifiers.

``accuracy`` and binary ``f1`` (of class ``positive``, 1 by default: MRPC's "equivalent", as
GLUE reports it) from predicted and gold label ids; :func:`predict` runs a
``...ForSequenceClassification`` model over tokenised examples in length-sorted batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ClsScores:
    """Scores of one model on one split."""

    accuracy: float
    f1: float
    examples: int

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "f1": self.f1}


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Share of ``pred`` equal to ``gold`` (same length, at least one item)."""
    if len(pred) != len(gold) or not gold:
        raise ValueError(f"need equally long, non-empty lists; got {len(pred)} and {len(gold)}")
    return sum(int(p == g) for p, g in zip(pred, gold, strict=True)) / len(gold)


def binary_f1(pred: Sequence[int], gold: Sequence[int], positive: int = 1) -> float:
    """F1 of class ``positive``: 2·TP / (2·TP + FP + FN); 0 when it is never predicted nor gold."""
    if len(pred) != len(gold):
        raise ValueError(f"need equally long lists; got {len(pred)} and {len(gold)}")
    tp = sum(int(p == positive and g == positive) for p, g in zip(pred, gold, strict=True))
    fp = sum(int(p == positive and g != positive) for p, g in zip(pred, gold, strict=True))
    fn = sum(int(p != positive and g == positive) for p, g in zip(pred, gold, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def score(pred: Sequence[int], gold: Sequence[int]) -> ClsScores:
    return ClsScores(accuracy(pred, gold), binary_f1(pred, gold), len(gold))


@torch.no_grad()
def predict(model: nn.Module, encoded: Sequence[dict], pad, batch_size: int = 64) -> list[int]:
    """Predicted label id of each encoded example (``{"input_ids", "token_type_ids"}`` lists).

    ``pad(rows) -> batch dict`` pads a list of encoded examples; batches are formed in order of
    length (less padding) and the predictions returned in the input order. Eval mode is set for
    the call and restored after.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    out = [0] * len(encoded)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad([encoded[i] for i in idx]).items()}
            batch.pop("labels", None)
            logits = model(**batch).logits
            for i, p in zip(idx, logits.argmax(-1).tolist(), strict=True):
                out[i] = int(p)
    finally:
        model.train(was_training)
    return out
