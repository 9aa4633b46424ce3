"""One training step of the sequence-classification task.

Teacher forward (no grad, only when a term reads it), student forward, then every term:
class-logit terms (``cls_ce``, ``cls_kd``, ``cls_ofa``) get both models' logits and the labels;
tap-reading classification terms (``cls_ofa_exit``, ``dmae``) get a
:class:`~attnkd.losses.terms.ClsView`; the transformer terms (``hidden_mse``, ``relation``, ...)
get the captured taps and the attention mask.

- With ``data.mask_ratio`` the batch holds ``student_input_ids`` (some tokens replaced by the
  mask token, :mod:`attnkd.data.token_mask`): the student reads those, the teacher the whole row.
- A truncated teacher: when no term reads the teacher's logits, the teacher stops right after the
  deepest layer any term taps (:func:`run_until`), so its upper layers and head never run.
- With ``data.mixture: ddk`` the batch holds the current domain weights, logged as
  ``mixture/w<i>`` (domain ``i`` as listed in ``results.json``'s ``train.mixture.domains``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkd.capture import Capture
from attnkd.engine.loop import StepOutput
from attnkd.losses.terms import ClassificationTerm, ClsTapTerm, ClsView, collect_taps
from attnkd.models.adapters import adapter_for, base_model

__all__ = ["config_uses_teacher", "make_step", "run_until", "teacher_stop_layer", "uses_teacher"]

EXTRA_KEYS = ("labels", "student_input_ids", "masked_tokens", "mixture_weights")
"""Batch entries that are not model inputs."""


def uses_teacher(terms: nn.ModuleList) -> bool:
    """Whether any term reads the teacher (its logits or its taps)."""
    return any(t.uses_teacher if isinstance(t, ClassificationTerm) else True for t in terms)


def config_uses_teacher(cfg) -> bool:
    """:func:`uses_teacher` for the configured terms, without building them."""
    from attnkd.losses.terms import TERMS

    classes = [TERMS.get(c.name).cls for c in cfg.losses]
    return any(
        getattr(c, "uses_teacher", True) if issubclass(c, ClassificationTerm) else True
        for c in classes
    )


def teacher_stop_layer(terms: nn.ModuleList) -> int | None:
    """The deepest teacher layer any term taps when no term reads the teacher's logits (the
    teacher may stop there); None when the teacher must run to its head (or not at all)."""
    if not uses_teacher(terms):
        return None
    for t in terms:
        if isinstance(t, ClsTapTerm):
            if t.reads_teacher_logits:
                return None
        elif isinstance(t, ClassificationTerm) and t.uses_teacher:
            return None
    layers = [tap.layer for tap in collect_taps(terms)[0]]
    return max(layers) if layers else None


class _Stop(Exception):  # noqa: N818 (control flow, not an error)
    pass


def run_until(model: nn.Module, inputs: dict[str, Tensor], last_layer: int | None):
    """``model(**inputs)``, or with ``last_layer`` only up to that transformer block: a hook on
    its output stops the forward (hooks installed before, e.g. by :class:`Capture`, still see
    it). Returns the model output, or None when stopped."""
    if last_layer is None:
        return model(**inputs)
    block = base_model(model).get_submodule(adapter_for(model).layer_path(last_layer))

    def stop(*_):
        raise _Stop

    handle = block.register_forward_hook(stop)
    try:
        model(**inputs)
    except _Stop:
        return None
    finally:
        handle.remove()
    raise RuntimeError(f"layer {last_layer} of {type(model).__name__} never ran")


def make_step(teacher: nn.Module, distiller: nn.Module, model: nn.Module | None = None):
    """The per-batch function (single process: ``model``, a DDP wrapper, is not used).

    Exit heads (``cls_ofa_exit``) are sized again here, after the task set the student's labels
    and before the optimizer is built.
    """
    terms, student = distiller.terms, distiller.student
    for term in terms:
        bind = getattr(term, "bind", None)
        if isinstance(term, ClsTapTerm) and bind is not None:
            bind(student)
    t_req, s_req = collect_taps(terms)
    t_cap = Capture(teacher, t_req) if uses_teacher(terms) else None
    stop_at = teacher_stop_layer(terms)
    s_cap = Capture(student, s_req)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        inputs = {k: v for k, v in batch.items() if k not in EXTRA_KEYS}
        labels, mask = batch["labels"], batch["attention_mask"].bool()
        masked = batch.get("masked_tokens")
        s_inputs = inputs if masked is None else {**inputs, "input_ids": batch["student_input_ids"]}
        t_logits = None
        if t_cap is not None:
            with torch.no_grad(), t_cap:
                out = run_until(teacher, inputs, stop_at)
            t_logits = None if out is None else out.logits.float()
        with s_cap:
            s_logits = student(**s_inputs).logits.float()
        t_taps = None if t_cap is None else t_cap.taps
        view = ClsView(t_logits, s_logits, labels, t_taps, s_cap.taps, mask, masked)
        total: Tensor | None = None
        values: dict[str, float] = {}
        for term in terms:
            if isinstance(term, ClsTapTerm):
                out = term(view)
            elif isinstance(term, ClassificationTerm):
                out = term(t_logits, s_logits, labels)
            else:
                out = term(t_taps, s_cap.taps, mask)
            for name, v in out.items():
                values[f"{term.label}/{name}"] = float(v.detach())
                total = term.weight * v if total is None else total + term.weight * v
        if "mixture_weights" in batch:
            for i, w in enumerate(batch["mixture_weights"][0].tolist()):
                values[f"mixture/w{i}"] = w
        if t_cap is not None:
            t_cap.taps.clear()
        s_cap.taps.clear()
        assert total is not None, "a run needs at least one loss term"
        return StepOutput(loss=total, terms=values, num_items=int(labels.shape[0]))

    return step
