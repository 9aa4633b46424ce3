"""Stage 3 of a conversion: end-to-end distillation of the converted model (LoLCATs stage 2,
MOHAWK stage 3, EchoAtt's fine-tuning).

The whole converted model runs on the batch and is pulled towards the teacher's outputs:
causal LMs by token-level KL(p_T || p_S) over real next-token positions
(:func:`attnkd.losses.token_divergence`), encoders by the MSE of the last hidden states over
real tokens (the mean-pooled sentence embedding is built from them). What trains is chosen by
:func:`attnkd.convert.align.set_trainable`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnkd.engine.loop import StepOutput
from attnkd.losses import hidden_mse, token_divergence

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def e2e_loss(teacher_out, student_out, mask: Tensor) -> Tensor:
    """KL of next-token distributions (outputs with ``logits``) or last-hidden MSE."""
    if hasattr(student_out, "logits") and student_out.logits is not None:
        return token_divergence(student_out.logits, teacher_out.logits, "fkl", mask=mask)
    return hidden_mse(student_out.last_hidden_state, teacher_out.last_hidden_state, mask)


def make_e2e_step(
    teacher: nn.Module, student: nn.Module
) -> Callable[[dict[str, Tensor]], StepOutput]:
    """``step(batch)`` for :func:`attnkd.engine.loop.fit`: teacher forward (no grad), student
    forward, :func:`e2e_loss`."""

    def step(batch: dict[str, Tensor]) -> StepOutput:
        mask = batch["attention_mask"].bool()
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        with torch.no_grad():
            t_out = teacher(**inputs)
        loss = e2e_loss(t_out, student(**inputs), mask)
        return StepOutput(loss=loss, terms={"e2e": float(loss.detach())},
                          num_items=int(mask.shape[0]))  # fmt: skip

    return step
