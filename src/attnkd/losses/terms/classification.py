"""Loss terms of the sequence-classification task: cross-entropy and Hinton KD on class logits.

Class logits come from the models' outputs (``ForSequenceClassification(...).logits``), not from
a hook, so these terms capture nothing; their ``forward(t_logits, s_logits, labels)`` takes the
teacher's and the student's (batch, classes) logits and the labels (batch,), ``-100`` for a row
without a label (unlabeled text, SSLD). Hidden-state and attention terms (``hidden_mse``,
``relation``, ...) are the transformer terms, used as they are.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnkd.losses.logits import IGNORE_INDEX, hinton_kd
from attnkd.losses.terms.base import LossTerm, register


class ClassificationTerm(LossTerm):
    """Base of the class-logit terms; ``uses_teacher`` says whether the teacher must run."""

    uses_teacher = False

    def taps(self):
        return [], []

    def forward(self, t_logits: Tensor | None, s_logits: Tensor, labels: Tensor) -> dict:
        raise NotImplementedError


def labelled_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over rows whose label is not -100; 0 (with a gradient) when there is none.

    Shapes: logits (batch, classes), labels (batch,).
    """
    keep = labels != IGNORE_INDEX
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], labels[keep])


@register("cls_ce", "cross-entropy of the student's class logits with the labels (-100: none)")
class ClsCrossEntropyTerm(ClassificationTerm):
    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.t_layer = self.s_layer = 0

    @property
    def label(self) -> str:
        return self.kind

    def forward(self, t_logits, s_logits, labels):
        return {"ce": labelled_ce(s_logits, labels)}


@register("cls_kd", "Hinton KD on class logits, τ²·KL(teacher‖student) at `temperature`, all rows")
class ClsKDTerm(ClsCrossEntropyTerm):
    uses_teacher = True

    def forward(self, t_logits, s_logits, labels):
        kd = hinton_kd(s_logits, t_logits, temperature=self.cfg.temperature)
        return {"kd": kd.kd}
