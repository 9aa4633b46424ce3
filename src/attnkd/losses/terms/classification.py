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

from attnkd.capture import split_heads
from attnkd.losses import features as feat
from attnkd.losses.cls_losses import attention_entropy, hard_negative_contrastive, ofa_target_loss
from attnkd.losses.logits import IGNORE_INDEX, hinton_kd
from attnkd.losses.terms.base import LossTerm, register
from attnkd.losses.terms.features import width_projector


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


@register("cls_ofa", "OFA-KD target-enhanced soft cross-entropy on class logits, exponent `gamma`")
class ClsOfaTerm(ClsCrossEntropyTerm):
    """:func:`attnkd.losses.cls_losses.ofa_target_loss` with ``eps = gamma``."""

    uses_teacher = True

    def forward(self, t_logits, s_logits, labels):
        value = ofa_target_loss(s_logits, t_logits, labels, self.cfg.gamma, self.cfg.temperature)
        return {"ofa": value}


@register("attention_entropy", "AEM: maximise the student's attention entropy (−λ·H) at a layer")
class AttentionEntropyTerm(LossTerm):
    """``-mean H(A)`` of the student's attention at ``student_layer`` from captured q and k
    (its weight is λ); the teacher is not read. For any transformer task; a relative-position
    bias (MPNet) is not added, so there it regularises the content part of the scores."""

    student_kinds = ("q", "k")

    def forward(self, t, s, mask):
        heads, dim = self.sg.num_heads, self.sg.head_dim
        q = split_heads(s.get("q", self.s_layer), heads)
        k = split_heads(s.get("k", self.s_layer), self.sg.num_kv_heads)
        if k.shape[1] != heads:  # grouped-query attention: each key head serves a group
            k = k.repeat_interleave(heads // k.shape[1], dim=1)
        assert q.shape[-1] == dim
        return {"neg_entropy": -attention_entropy(q, k, mask).mean()}


@register("dcd", "contrastive distillation of mean-pooled hidden states, teacher-mined negatives")
class HardNegativeContrastiveTerm(LossTerm):
    """:func:`attnkd.losses.cls_losses.hard_negative_contrastive` on the mean-pooled hidden
    states of ``teacher_layer`` and ``student_layer`` (``projector: true`` when widths differ);
    ``relation_heads`` (default 4) is the number of negatives, ``temperature`` the InfoNCE one."""

    teacher_kinds = student_kinds = ("hidden",)

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.projector = width_projector(cfg, teacher, student)

    def forward(self, t, s, mask):
        hs = s.get("hidden", self.s_layer)
        if self.projector is not None:
            hs = self.projector(hs)
        ps, pt = feat.mean_pool(hs, mask), feat.mean_pool(t.get("hidden", self.t_layer), mask)
        k = self.cfg.relation_heads or 4
        return {"nce": hard_negative_contrastive(ps, pt, k, self.cfg.temperature)}
