"""Image terms of the teacher strategies (docs/teachers.md): ground-truth mixing for
self-distillation and multi-exit self-distillation (:mod:`attnkd.losses.selfdistill`)."""

from __future__ import annotations

import torch
from torch import nn

from attnkd.capture.images import FeatureCapture, VisionTap
from attnkd.losses.selfdistill import ExitHead, exit_kd, mixed_kd
from attnkd.losses.terms.base import TermError, register
from attnkd.losses.terms.vision import VisionTerm


@register(
    "mixed_kd",
    "soft CE to ξ·y + (1−ξ)·p_T (ξ = gt_weight; self-distillation with ground-truth mixing)",
)
class MixedKDTerm(VisionTerm):
    """Borup & Andersen 2021: the target mixes the true label (weight ``gt_weight``) with the
    teacher's probabilities at ``temperature``; τ² scaling as Hinton KD."""

    teacher_kinds = student_kinds = ("logits",)

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        if not 0.0 <= cfg.gt_weight <= 1.0:
            raise TermError("gt_weight", f"'mixed_kd' gt_weight must be in [0, 1], got "
                            f"{cfg.gt_weight}")  # fmt: skip

    def forward(self, t, s, labels):
        r = mixed_kd(s.get("logits"), t.get("logits"), labels, self.cfg.gt_weight,
                     self.cfg.temperature)  # fmt: skip
        return {"mixed": r.loss}


@register(
    "exit_kd",
    "multi-exit self-distillation: an exit head on student stage `student_layer` learns the "
    "final exit at `temperature` (+ gt_weight·CE) (Be Your Own Teacher)",
)
class ExitKDTerm(VisionTerm):
    """Student only: the exit head (trained with the student, not exported) reads stage
    ``student_layer``; its width is read from the student by :meth:`bind`."""

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        if self.s_layer >= student.num_layers - 1:
            raise TermError("student_layer", f"'exit_kd' needs an intermediate stage (0 .. "
                            f"{student.num_layers - 2}), got {cfg.student_layer}")  # fmt: skip
        self.head: ExitHead | None = None

    def taps(self):
        return [], [VisionTap("fmap", self.s_layer), VisionTap("logits")]

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.s_layer}"

    def bind(self, student: nn.Module) -> None:
        """Size the exit head from one dry forward of ``student`` (its stage width, classes)."""
        c = student.config
        x = torch.zeros(1, c.in_channels, c.image_size, c.image_size,
                        device=next(student.parameters()).device)  # fmt: skip
        was = student.training
        student.eval()
        with torch.no_grad(), FeatureCapture(student, self.taps()[1]) as cap:
            student(x)
        student.train(was)
        fmap = cap.taps.get("fmap", self.s_layer)
        width = fmap.shape[1] if fmap.dim() == 4 else fmap.shape[-1]
        self.head = ExitHead(width, c.num_classes).to(fmap.device)

    def forward(self, t, s, labels):
        if self.head is None:
            raise RuntimeError("ExitKDTerm.bind(student) must run before training")
        logits = self.head(s.get("fmap", self.s_layer))
        r = exit_kd(logits, s.get("logits"), labels, self.cfg.temperature, self.cfg.gt_weight)
        out = {"kd": r.kd}
        if self.cfg.gt_weight:  # the parts are summed: the CE part goes in already weighted
            out["wce"] = self.cfg.gt_weight * r.ce
        return out
