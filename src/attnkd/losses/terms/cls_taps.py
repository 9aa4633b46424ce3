"""Sequence-classification terms that read captured taps as well as class logits.

- ``cls_ofa_exit``: OFA-KD exit heads (Hao et al. 2023). An exit head (LayerNorm + linear on the
  mean-pooled tokens) reads the student's hidden states at ``student_layer`` and is trained,
  together with the layers below it, against the teacher's class logits with the
  target-enhanced loss (:func:`attnkd.losses.cls_losses.ofa_target_loss`, exponent ``gamma``).
  One term per exit, so each layer has its own weight, ``gamma`` and ``temperature``. The heads
  belong to the term, not to the student: they are trained and checkpointed with it and are
  not part of the exported model (which keeps its single final head).
- ``dmae`` / ``dmae_visible``: DMAE feature distillation on a masked input (``data.mask_ratio``):
  the student's hidden states at ``student_layer``, through a learned projector, match the
  teacher's at ``teacher_layer`` at the masked positions (``dmae``: the student reconstructs
  what it could not see) or at the visible ones (``dmae_visible``: the DMAE paper's choice).
  When no term needs the teacher's logits, the teacher runs only up to the deepest layer a
  term reads (a truncated teacher, :mod:`attnkd.tasks.sequence_classification_step`).

Their ``forward(view)`` takes a :class:`ClsView` (logits, labels, taps and masks of one step).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from attnkd.capture import Tap, Taps
from attnkd.losses import features as feat
from attnkd.losses.cls_losses import masked_token_mse, ofa_target_loss
from attnkd.losses.selfdistill import ExitHead
from attnkd.losses.terms.base import TermError, register
from attnkd.losses.terms.classification import ClassificationTerm

__all__ = ["ClsOfaExitTerm", "ClsTapTerm", "ClsView", "DmaeTerm", "DmaeVisibleTerm"]


@dataclass
class ClsView:
    """What a classification step hands its tap-reading terms.

    Shapes: logits (batch, classes); labels (batch,) (-100: no label); ``mask`` (batch, seq)
    bool, True = real token; ``masked`` (batch, seq) bool, True = replaced by the mask token in
    the student's input (None when ``data.mask_ratio`` is 0). ``t_logits`` is None when the
    teacher was not run to its head; ``t`` None when the teacher did not run at all.
    """

    t_logits: Tensor | None
    s_logits: Tensor
    labels: Tensor
    t: Taps | None
    s: Taps
    mask: Tensor
    masked: Tensor | None = None


class ClsTapTerm(ClassificationTerm):
    """Base of the classification terms that read taps; ``reads_teacher_logits`` says whether
    the teacher must run to its head (False: it may stop after the deepest tapped layer)."""

    reads_teacher_logits = False

    def taps(self) -> tuple[list[Tap], list[Tap]]:
        return (
            [Tap(k, self.t_layer) for k in self.teacher_kinds],
            [Tap(k, self.s_layer) for k in self.student_kinds],
        )

    def forward(self, view: ClsView) -> dict[str, Tensor]:  # type: ignore[override]
        raise NotImplementedError


@register(
    "cls_ofa_exit",
    "OFA-KD exit head on student layer `student_layer`: target-enhanced loss (`gamma`) against "
    "the teacher's class logits; the head is not exported",
)
class ClsOfaExitTerm(ClsTapTerm):
    uses_teacher = True
    reads_teacher_logits = True
    student_kinds = ("hidden",)

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        if self.s_layer >= student.num_layers - 1:
            raise TermError(
                "student_layer",
                f"'cls_ofa_exit' needs an intermediate student layer (0 .. "
                f"{student.num_layers - 2}); the last layer's exit is the model's own head "
                f"(use cls_ofa), got {cfg.student_layer}",
            )
        self.head: ExitHead | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.s_layer}"

    def bind(self, student: nn.Module) -> None:
        """Size the exit head: the student's width, its number of classes. Called again once
        the task has set the labels; a head of the right size is kept."""
        classes, width = int(student.config.num_labels), int(student.config.hidden_size)
        if self.head is not None and self.head.fc.out_features == classes:
            return
        device = next(student.parameters()).device
        self.head = ExitHead(width, classes).to(device)

    def exit_logits(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """(batch, seq, width) hidden states, (batch, seq) mask -> (batch, classes)."""
        if self.head is None:
            raise RuntimeError("ClsOfaExitTerm.bind(student) must run before training")
        return self.head(feat.mean_pool(hidden, mask))

    def forward(self, view: ClsView) -> dict[str, Tensor]:  # type: ignore[override]
        if view.t_logits is None:
            raise RuntimeError("'cls_ofa_exit' needs the teacher's logits")
        logits = self.exit_logits(view.s.get("hidden", self.s_layer), view.mask)
        c = self.cfg
        return {"ofa": ofa_target_loss(logits, view.t_logits, view.labels, c.gamma, c.temperature)}


@register(
    "dmae",
    "DMAE: the student (through a projector) reconstructs the teacher's hidden states at the "
    "tokens masked in its input (data.mask_ratio)",
)
class DmaeTerm(ClsTapTerm):
    uses_teacher = True
    teacher_kinds = student_kinds = ("hidden",)
    positions = "masked"

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.projector = feat.Projector(student.hidden_size, teacher.hidden_size)

    def forward(self, view: ClsView) -> dict[str, Tensor]:  # type: ignore[override]
        if view.masked is None or view.t is None:
            raise RuntimeError(f"'{self.kind}' needs a masked student input (data.mask_ratio > 0)")
        hs = self.projector(view.s.get("hidden", self.s_layer))
        ht = view.t.get("hidden", self.t_layer)
        return {"mse": masked_token_mse(hs, ht, view.mask, view.masked, self.positions)}


@register(
    "dmae_visible",
    "DMAE as in the paper: projected student hidden states match the teacher's at the tokens "
    "the student saw (data.mask_ratio)",
)
class DmaeVisibleTerm(DmaeTerm):
    positions = "visible"
