"""Stage 1 of a conversion: attention transfer (Hedgehog / LoLCATs), all layers in parallel.

Each converted layer is fed the *teacher* layer's input (captured by a forward pre-hook on the
teacher's attention module), so layers train independently and at once from one teacher
forward. The inherited projections give q, k, v (frozen); the teacher's softmax attention on
them is the target. Only the mixers' parameters (feature maps, gamma) train. Losses, averaged
over converted layers:

- ``mse``: attention-output MSE, ``hidden_mse`` of the per-head outputs over real tokens
  (LoLCATs);
- ``ce``: attention cross-entropy ``-sum_j A_T log A_S`` with the linear student's weights
  ``phi(q).phi(k) / sum`` (Hedgehog), by the chunked kernel of :func:`attnkd.losses.attention_ce`;
- ``kl`` (sparse top-k): KL between the teacher's attention and the estimator's
  ``softmax(q P (k P)^T)`` (SEA), by :func:`attnkd.losses.attention_kl`.

Stages 2 and 3 (block alignment, end-to-end KD) are :mod:`.align` and :mod:`.e2e`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkd.convert.swap import ConvertedAttention, converted_modules
from attnkd.engine.loop import StepOutput
from attnkd.losses import attention_ce, attention_kl, hidden_mse
from attnkd.models.adapters import adapter_for, base_model

LOSSES = ("mse", "ce", "ce+mse", "kl")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TransferModule(nn.Module):
    """The mixers of a converted model, keyed by layer: what stage 1 trains and checkpoints."""

    def __init__(self, student: nn.Module):
        super().__init__()
        convs = converted_modules(student)
        if not convs:
            raise ValueError("the student has no converted attention (use convert_attention)")
        self.mixers = nn.ModuleDict({str(i): c.mixer for i, c in convs.items()})


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """The teacher's attention ``softmax(q k^T / sqrt(d)) v`` per head (B, H, S, Dv).

    q (B, H, S, D), k/v (B, H_kv, S, D), mask (B, S) bool. Each query also sees itself, so
    padded rows stay finite (they are never read)."""
    s = q.shape[2]
    allowed = torch.ones(s, s, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    allowed = allowed | torch.eye(s, dtype=torch.bool, device=q.device)
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _flat(y: Tensor) -> Tensor:
    """(B, H, S, D) -> (B, S, H * D)."""
    return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)


def layer_losses(
    conv: ConvertedAttention,
    hidden: Tensor,
    position_embeddings: tuple[Tensor, Tensor] | None,
    mask: Tensor | None,
    loss: str,
) -> dict[str, Tensor]:
    """Stage-1 losses of one converted layer given the teacher layer's input ``hidden`` (B, S, W).

    Returns ``{"mse": ..., "ce": ...}`` (the parts ``loss`` names), scalars."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    mixer = conv.mixer
    with torch.no_grad():
        q, k, v = conv.project(hidden, position_embeddings)
    out: dict[str, Tensor] = {}
    if "mse" in loss:
        with torch.no_grad():
            target = softmax_attention(q, k, v, mask, mixer.causal)
        out["mse"] = hidden_mse(_flat(mixer(q, k, v, mask)), _flat(target), mask)
    if loss == "kl":  # sparse: the estimated attention softmax(qe ke^T) against the teacher's
        qe, ke = mixer.estimates(q, k)
        out["kl"] = attention_kl(q, k, qe, ke, mask, mixer.causal)
    if "ce" in loss:
        if mixer.window or not mixer.linear:
            raise ValueError("attention cross-entropy needs a purely linear mixer (kind 'linear')")
        fq, fk = mixer.features(q, k)
        out["ce"] = attention_ce(q, k, fq, fk, mask, mixer.causal, student_kernel="linear")
    return out


class TeacherInputs:
    """Context manager: records the input of the teacher's attention module of given layers."""

    def __init__(self, teacher: nn.Module, layers: list[int]):
        adapter, base = adapter_for(teacher), base_model(teacher)
        self.modules = {i: base.get_submodule(adapter.attention.format(i=i)) for i in layers}
        self.inputs: dict[int, tuple[Tensor, Any]] = {}
        self._handles: list = []

    def __enter__(self) -> TeacherInputs:
        for i, mod in self.modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i: int):
        def record(_mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs[i] = (hidden, kwargs.get("position_embeddings"))

        return record


def make_transfer_step(
    teacher: nn.Module, student: nn.Module, loss: str = "mse"
) -> Callable[[dict[str, Tensor]], StepOutput]:
    """``step(batch) -> StepOutput`` for :func:`attnkd.engine.loop.fit` (module: a
    :class:`TransferModule` of ``student``). One teacher forward (no grad, base model only, so
    no LM head), then every converted layer's losses; the total is their mean over layers."""
    convs = converted_modules(student)
    capture = TeacherInputs(teacher, list(convs))
    body = base_model(teacher)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        mask = batch["attention_mask"].bool()
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        with torch.no_grad(), capture:
            body(**inputs)
        sums: dict[str, Tensor] = {}
        for i, conv in convs.items():
            hidden, pos = capture.inputs[i]
            for name, value in layer_losses(conv, hidden, pos, mask, loss).items():
                sums[name] = sums.get(name, 0.0) + value / len(convs)
        capture.inputs.clear()
        total = sum(sums.values())
        terms = {name: float(v.detach()) for name, v in sums.items()}
        return StepOutput(loss=total, terms=terms, num_items=int(mask.shape[0]))

    return step
