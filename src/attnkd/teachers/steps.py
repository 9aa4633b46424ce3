"""Step functions of the teacher strategies, in the shape of :func:`attnkd.distill.make_step`
(``step(batch) -> StepOutput``): a teacher set on token batches or on images, and mutual
distillation of two image models trained together."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkd.capture import Capture
from attnkd.capture.images import FeatureCapture
from attnkd.engine.loop import StepOutput
from attnkd.teachers.set import Member, TeacherTaps, teacher_taps_for

__all__ = [
    "MutualPair",
    "detached",
    "make_image_set_step",
    "make_mutual_step",
    "make_set_step",
    "make_token_mutual_step",
]


def _members_with_taps(members: list[Member], terms: nn.ModuleList, capture_cls):
    out = []
    for m in members:
        taps = teacher_taps_for(terms, m.label)
        if taps:  # a teacher no term reads is not run
            out.append((m, capture_cls(m.model, taps)))
    return out


def make_set_step(members: list[Member], distiller: nn.Module, model: nn.Module | None = None):
    """Token batches (sentence, causal LM): every teacher reads the same batch (one shared
    tokenizer), then ``model(batch, TeacherTaps)`` runs the student and the routed terms."""
    model = distiller if model is None else model
    caps = _members_with_taps(members, distiller.terms, Capture)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        with torch.no_grad():
            for m, cap in caps:
                with cap:
                    m.model(**batch)
        t = TeacherTaps({m.label: cap.taps for m, cap in caps})
        out = model(batch, t)
        t.clear()
        total = out.pop("loss")
        values = {k: float(v.detach()) for k, v in out.items()}
        return StepOutput(loss=total, terms=values, num_items=int(batch["input_ids"].shape[0]))

    return step


def _weighted_terms(terms, t, s, y, prefix: str = ""):
    total: Tensor | None = None
    values: dict[str, float] = {}
    for term in terms:
        for name, v in term(t, s, y).items():
            values[f"{prefix}{term.label}/{name}"] = float(v.detach())
            total = term.weight * v if total is None else total + term.weight * v
    return total, values


def make_image_set_step(
    members: list[Member], distiller: nn.Module, model: nn.Module | None = None
):
    """Images: every teacher (no grad) and the student see the batch; routed terms get the
    teachers' taps by label. Single-process only, as the image task's own step."""
    caps = _members_with_taps(members, distiller.terms, FeatureCapture)
    s_cap = FeatureCapture(distiller.student, [x for t in distiller.terms for x in t.taps()[1]])

    def step(batch: dict[str, Tensor]) -> StepOutput:
        x, y = batch["pixel_values"], batch["labels"]
        with torch.no_grad():
            for m, cap in caps:
                with cap:
                    m.model(x)
        with s_cap:
            distiller.student(x)
        t = TeacherTaps({m.label: cap.taps for m, cap in caps})
        total, values = _weighted_terms(distiller.terms, t, s_cap.taps, y)
        t.clear()
        s_cap.taps.clear()
        assert total is not None, "a run needs at least one loss term"
        return StepOutput(loss=total, terms=values, num_items=int(x.shape[0]))

    return step


class MutualPair(nn.Module):
    """Two image models trained together (Deep Mutual Learning, Zhang et al. 2018; the
    mutual-distillation step of Trans-Encoder and CoMD): ``terms`` teach the student from the
    peer's detached outputs, ``peer_terms`` (built from the same config) teach the peer from the
    student's. Both models and both term sets are trained by one optimizer."""

    def __init__(self, student: nn.Module, peer: nn.Module, terms: nn.ModuleList,
                 peer_terms: nn.ModuleList):  # fmt: skip
        super().__init__()
        self.student, self.peer = student, peer
        self.terms, self.peer_terms = terms, peer_terms


def detached(taps):
    """The same taps (``Taps`` or ``VisionTaps``) cut from the graph: a target, never a path
    for gradients."""
    return type(taps)({k: v.detach() for k, v in taps.tensors.items()})


def _float32(taps):
    half = (torch.float16, torch.bfloat16)
    return type(taps)({k: v.float() if v.dtype in half else v for k, v in taps.tensors.items()})


def _mutual_taps(pair: MutualPair) -> tuple[list, list]:
    s_taps = [x for t in pair.terms for x in t.taps()[1]]
    s_taps += [x for t in pair.peer_terms for x in t.taps()[0]]
    p_taps = [x for t in pair.peer_terms for x in t.taps()[1]]
    p_taps += [x for t in pair.terms for x in t.taps()[0]]
    return s_taps, p_taps


def make_mutual_step(pair: MutualPair, model: nn.Module | None = None):
    """One step of mutual distillation: both models see the batch; the student's terms read the
    peer's detached taps as the teacher's and the peer's terms the student's, so each model's
    gradient comes from its own outputs only."""
    s_taps, p_taps = _mutual_taps(pair)
    s_cap, p_cap = FeatureCapture(pair.student, s_taps), FeatureCapture(pair.peer, p_taps)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        x, y = batch["pixel_values"], batch["labels"]
        with s_cap:
            pair.student(x)
        with p_cap:
            pair.peer(x)
        a, va = _weighted_terms(pair.terms, detached(p_cap.taps), s_cap.taps, y, "student/")
        b, vb = _weighted_terms(pair.peer_terms, detached(s_cap.taps), p_cap.taps, y, "peer/")
        s_cap.taps.clear()
        p_cap.taps.clear()
        return StepOutput(loss=a + b, terms={**va, **vb}, num_items=int(x.shape[0]))

    return step


def make_token_mutual_step(pair: MutualPair, model: nn.Module | None = None):
    """Mutual distillation on token batches (sentence, causal LM; Trans-Encoder, CoMD): as
    :func:`make_mutual_step`, with q/k/v/hidden capture by family adapter; the terms run in
    float32 outside autocast, as in :class:`attnkd.distill.Distiller`. Single process."""
    s_taps, p_taps = _mutual_taps(pair)
    s_cap, p_cap = Capture(pair.student, s_taps), Capture(pair.peer, p_taps)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        mask = batch["attention_mask"].bool()
        with s_cap:
            pair.student(**batch)
        with p_cap:
            pair.peer(**batch)
        with torch.autocast(mask.device.type, enabled=False):
            st, pt = _float32(s_cap.taps), _float32(p_cap.taps)
            a, va = _weighted_terms(pair.terms, detached(pt), st, mask, "student/")
            b, vb = _weighted_terms(pair.peer_terms, detached(st), pt, mask, "peer/")
        s_cap.taps.clear()
        p_cap.taps.clear()
        return StepOutput(
            loss=a + b, terms={**va, **vb}, num_items=int(batch["input_ids"].shape[0])
        )

    return step
