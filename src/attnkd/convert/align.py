"""Stage 2 of a conversion: block-output alignment (MOHAWK, Bick et al. 2024, stage 2).

Every converted block (the whole transformer layer around a converted attention) is fed the
*teacher* block's input and trained to give the teacher block's output (MSE over real tokens).
Layers train independently and at once from one teacher forward, like stage 1, but the loss sees
the attention through the layer's output projection, residual, norms and MLP. What trains is
chosen by :func:`set_trainable` (the new parameters, plus the attention projections of the
converted layers for ``params="attention"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from attnkd.convert.mla import LatentKVAttention
from attnkd.convert.swap import converted_modules
from attnkd.engine.loop import StepOutput
from attnkd.losses import hidden_mse
from attnkd.models.adapters import adapter_for, base_model

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PARAMS = ("attention", "mixer")


def set_trainable(student: nn.Module, params: str) -> list[nn.Parameter]:
    """Freeze ``student`` except the converted layers' mixers (MLA: the latent projections)
    and, for ``params='attention'``, their inherited projections (q/k/v/o). Returns the
    trainable parameters (an error if none)."""
    if params not in PARAMS:
        raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
    for p in student.parameters():
        p.requires_grad_(False)
    chosen: list[nn.Parameter] = []
    adapter, base = adapter_for(student), base_model(student)
    for i, conv in converted_modules(student).items():
        chosen += list(conv.mixer.parameters())
        if params == "attention":
            chosen += [p for name, p in conv.named_parameters() if not name.startswith("mixer.")]
            out = adapter.attention_output.format(i=i)
            if not out.startswith(adapter.attention.format(i=i) + "."):  # BERT: o outside
                chosen += list(base.get_submodule(out).parameters())
    for m in student.modules():  # MLA layers: their latent projections and q/o
        if isinstance(m, LatentKVAttention):
            chosen += list(m.kv_down.parameters()) + list(m.kv_up.parameters())
            if params == "attention":
                chosen += list(m.q_proj.parameters()) + list(m.o_proj.parameters())
    unique = list({id(p): p for p in chosen}.values())
    if not unique:
        raise ValueError(f"nothing to train with params={params!r} (no new parameters)")
    for p in unique:
        p.requires_grad_(True)
    return unique


class BlockIO:
    """Context manager: records the input (args, kwargs) and output of chosen layer blocks."""

    def __init__(self, model: nn.Module, layers: list[int]):
        adapter, base = adapter_for(model), base_model(model)
        self.blocks = {i: base.get_submodule(adapter.layer_path(i)) for i in layers}
        self.inputs: dict[int, tuple[tuple, dict[str, Any]]] = {}
        self.outputs: dict[int, Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> BlockIO:
        for i, block in self.blocks.items():
            self._handles.append(block.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._post(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, i: int):
        def record(_mod, args, kwargs):
            self.inputs[i] = (args, kwargs)

        return record

    def _post(self, i: int):
        def record(_mod, _args, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return record


def make_align_step(
    teacher: nn.Module, student: nn.Module
) -> Callable[[dict[str, Tensor]], StepOutput]:
    """``step(batch)`` for :func:`attnkd.engine.loop.fit`: one teacher forward records every
    converted block's input and output; each student block runs on the teacher's input (in
    layer order, so shared layers find their source's attention); loss = mean block MSE."""
    convs = converted_modules(student)
    record = BlockIO(teacher, list(convs))
    adapter, base = adapter_for(student), base_model(student)
    blocks = {i: base.get_submodule(adapter.layer_path(i)) for i in convs}
    body = base_model(teacher)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        mask = batch["attention_mask"].bool()
        with torch.no_grad(), record:
            body(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
        total = 0.0
        for i, block in blocks.items():
            args, kwargs = record.inputs[i]
            kwargs = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}
            out = block(*args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            total = total + hidden_mse(out, record.outputs[i], mask) / len(blocks)
        record.inputs.clear()
        record.outputs.clear()
        return StepOutput(loss=total, terms={"block_mse": float(total.detach())},
                          num_items=int(mask.shape[0]))  # fmt: skip

    return step
