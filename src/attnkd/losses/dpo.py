"""Direct Preference Optimization (Rafailov et al. 2023) as pure tensor functions.

For a pair of responses to one prompt, ``y_w`` preferred over ``y_l``, a policy π and a frozen
reference π_ref, with ``log π(y)`` the sum of the response tokens' log-probabilities:

    r(y)   = β · (log π(y) − log π_ref(y))          (implicit reward)
    L_DPO  = −log σ(r(y_w) − r(y_l))                 (mean over pairs)

LLaVA-MoD's preference distillation (Shu et al. 2024) uses the large teacher as π_ref; the
original DPO uses the policy's starting weights. Both are the same function here: only the
reference log-probs passed in differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DPOLoss", "dpo_loss", "sequence_logprobs", "token_logprobs"]


@dataclass
class DPOLoss:
    """``loss`` (scalar, mean over pairs) with per-pair diagnostics (detached, (pairs,))."""

    loss: Tensor
    chosen_reward: Tensor
    """β · (log π(y_w) − log π_ref(y_w))."""
    rejected_reward: Tensor
    """β · (log π(y_l) − log π_ref(y_l))."""

    @property
    def margin(self) -> Tensor:
        return self.chosen_reward - self.rejected_reward

    @property
    def accuracy(self) -> float:
        """Share of pairs whose implicit reward ranks the chosen response first."""
        return float((self.margin > 0).double().mean()) if self.margin.numel() else 0.0


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
) -> DPOLoss:
    """DPO loss from sequence log-probs, each (pairs,): policy and reference, chosen and
    rejected. ``beta`` > 0 scales the implicit reward (higher: stay closer to the reference).

    Computed as ``softplus(−(r_w − r_l))`` (= −log σ, stable for large margins). Gradients flow
    to the policy log-probs only; the reference log-probs are detached.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(
            "policy/reference chosen/rejected log-probs must all be (pairs,), got "
            f"{[tuple(s) for s in shapes]}"
        )
    chosen = beta * (policy_chosen - ref_chosen.detach())
    rejected = beta * (policy_rejected - ref_rejected.detach())
    if chosen.numel() == 0:
        loss = policy_chosen.sum() * 0.0
    else:
        loss = F.softplus(-(chosen - rejected)).mean()
    return DPOLoss(loss, chosen.detach(), rejected.detach())


def sequence_logprobs(logits: Tensor, input_ids: Tensor, response_mask: Tensor) -> Tensor:
    """Sum of log p(token_t | tokens_<t) over the response tokens of each row.

    Shapes: ``logits`` (batch, seq, vocab) from a causal LM on ``input_ids`` (batch, seq);
    ``response_mask`` (batch, seq) bool, True where token t belongs to the response (position
    0 is never scored: nothing predicts it). Returns (batch,) in float32 (float64 logits stay
    float64). Log-softmax runs on the rows needed only.
    """
    if logits.shape[:2] != input_ids.shape or response_mask.shape != input_ids.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and "
            f"response_mask {tuple(response_mask.shape)} must share (batch, seq)"
        )
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    target = input_ids[:, 1:]
    keep = response_mask[:, 1:].bool()
    rows = logits[:, :-1][keep].to(dtype)  # (n, vocab): the positions predicting a response token
    lp = torch.log_softmax(rows, dim=-1).gather(-1, target[keep].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape[0], dtype=dtype, device=logits.device)
    row_of = torch.arange(input_ids.shape[0], device=logits.device)[:, None].expand_as(target)
    return out.index_add(0, row_of[keep], lp)


def token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """(batch, seq - 1): log p(input_ids[:, t + 1] | input_ids[:, :t + 1]) from causal-LM
    ``logits`` (batch, seq, vocab), in float32 (float64 stays float64)."""
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not fit input_ids {tuple(input_ids.shape)}"
        )
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    lp = torch.log_softmax(logits[:, :-1].to(dtype), dim=-1)
    return lp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
