"""α as a training metric: teacher-forced speculative acceptance of a student used as a draft.

At every position of a few held-out blocks, the expected acceptance of speculative sampling
(temperature 1) is ``sum_x min(p(x), q(x)) = 1 - TVD(p, q)`` (METHODS.md section 1), p the
teacher's and q the student's next-token distribution on the same text; greedy acceptance is
whether the two argmaxes agree. Averaged over the blocks' positions this is cheap (one student
forward per block; the teacher's logits are computed once, on first use) and tracks what
speculative decoding measures, so it can pick checkpoints (``train.select_metric: alpha``).
It is teacher-forced: it scores the data's contexts, not the contexts speculative decoding
would reach, so decoding α (``attnkd eval --speculative``) remains the judge.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkd.errors import AttnkdError
from attnkd.eval.spec_cost import Acceptance, acceptance_from_logits


class AlphaProbe:
    """``probe(student) -> {"alpha": ..., "alpha_greedy": ...}`` on ``blocks`` (n, L).

    The teacher's logits (n, L - 1, V) are computed on the first call and kept (float32), so
    ``n`` should stay small (2-4 blocks: about ``n * L * V * 4`` bytes).
    """

    def __init__(self, teacher: nn.Module, blocks: Tensor, temperature: float = 1.0):
        if blocks.dim() != 2 or blocks.shape[0] < 1 or blocks.shape[1] < 2:
            raise AttnkdError(f"alpha blocks must be (n >= 1, L >= 2), got {tuple(blocks.shape)}")
        self.teacher = teacher
        self.blocks = blocks
        self.temperature = temperature
        self._teacher_logits: list[Tensor] | None = None

    def _logits(self, model: nn.Module) -> list[Tensor]:
        device = next(model.parameters()).device
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                return [model(input_ids=row[None].to(device)).logits[0, :-1].float()
                        for row in self.blocks]  # fmt: skip
        finally:
            for m, mode in modes:
                m.train(mode)

    def acceptance(self, student: nn.Module) -> Acceptance:
        if self._teacher_logits is None:
            self._teacher_logits = self._logits(self.teacher)
        total = Acceptance(0.0, 0.0, 0)
        for zt, zs in zip(self._teacher_logits, self._logits(student), strict=True):
            a = acceptance_from_logits(zt, zs.to(zt.device), self.temperature)
            total = Acceptance(total.alpha_sum + a.alpha_sum, total.greedy_sum + a.greedy_sum,
                               total.count + a.count)  # fmt: skip
        return total

    def __call__(self, student: nn.Module) -> dict[str, float]:
        a = self.acceptance(student)
        return {"alpha": a.alpha, "alpha_greedy": a.alpha_greedy}
