"""What a draft is worth: acceptance on teacher-forced text, step costs, the speed-up model.

Speed-up model (METHODS.md section 1, Leviathan et al.): with per-token acceptance α and γ draft
tokens per block, a teacher call yields on average τ = (1 - α^(γ+1)) / (1 - α) tokens; a block
costs γ draft steps (each c teacher steps) and one verification call (v teacher steps, v the
cost of scoring γ + 1 tokens relative to a single-token teacher step), so the speed-up over plain
teacher decoding is about τ / (γ c + v). The draft breaks even where that equals 1.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnkd.errors import AttnkdError
from attnkd.eval.speculative import CachedLM


def block_efficiency(alpha: float, gamma: int) -> float:
    """τ = (1 - α^(γ+1)) / (1 - α): expected tokens per teacher call (γ + 1 at α = 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise AttnkdError(f"acceptance alpha must lie in [0, 1], got {alpha}")
    if alpha == 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float, v: float = 1.0) -> float:
    """τ / (γ c + v): the model's speed-up over plain teacher decoding."""
    return block_efficiency(alpha, gamma) / (gamma * c + v)


def break_even_alpha(gamma: int, c: float, v: float = 1.0) -> float:
    """The α at which :func:`expected_speedup` is 1 (τ = γ c + v); ``inf`` if no α in [0, 1]
    reaches it, 0 if any draft pays (γ c + v <= 1). τ rises with α, so bisection is exact."""
    need = gamma * c + v
    if need <= 1.0:
        return 0.0
    if need > gamma + 1.0:
        return math.inf
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if block_efficiency(mid, gamma) < need else (lo, mid)
    return hi


def monotone_verify_ratios(v: Mapping[int, float]) -> dict[int, float]:
    """Measured verification ratios γ -> v(γ) made physically consistent: at least 1 (a call
    scoring γ + 1 tokens costs no less than a 1-token step) and non-decreasing in γ (the
    least-squares non-decreasing fit, pool-adjacent-violators). Timing noise can break both on a
    busy machine, and :func:`choose_gamma` would then chase the noise."""
    gammas = sorted(v)
    blocks: list[list[float]] = []  # [mean, weight] of pooled runs
    for g in gammas:
        blocks.append([max(float(v[g]), 1.0), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out: list[float] = []
    for mean, weight in blocks:
        out += [mean] * int(weight)
    return dict(zip(gammas, out, strict=True))


def choose_gamma(
    alpha: float, c: float, v: float | Mapping[int, float] = 1.0, max_gamma: int = 8
) -> int:
    """The γ in 1..max_gamma with the highest modelled speed-up; ``v`` a constant or a map
    γ -> measured verification cost (γ missing from the map are skipped)."""
    best, best_s = 0, -1.0
    for g in range(1, max_gamma + 1):
        if isinstance(v, Mapping):
            if g not in v:
                continue
            vg = v[g]
        else:
            vg = v
        s = expected_speedup(alpha, g, c, vg)
        if s > best_s:
            best, best_s = g, s
    if not best:
        raise AttnkdError("no gamma to choose from: give v for at least one gamma in 1..max_gamma")
    return best


@torch.no_grad()
def teacher_forced_acceptance(
    teacher: nn.Module, draft: nn.Module, blocks: Tensor, temperature: float = 1.0
) -> float:
    """1 - mean TVD(p_teacher, q_draft) over every next-token position of ``blocks`` (n, L).

    Both models read the same text (teacher forcing); at ``temperature`` this is the expected
    per-token acceptance of speculative sampling on that text. Sums in float64.
    """
    if blocks.dim() != 2 or blocks.shape[1] < 2:
        raise AttnkdError(f"blocks must be (n, L >= 2) token ids, got {tuple(blocks.shape)}")
    if temperature <= 0:
        raise AttnkdError(f"temperature must be > 0 for acceptance, got {temperature}")
    total, count = 0.0, 0
    device = next(teacher.parameters()).device
    for row in blocks:
        ids = row[None].to(device=device, dtype=torch.long)
        p = torch.softmax(teacher(input_ids=ids).logits[0, :-1].float() / temperature, -1)
        q = torch.softmax(draft(input_ids=ids).logits[0, :-1].float() / temperature, -1)
        if p.shape != q.shape:
            raise AttnkdError(f"teacher logits {tuple(p.shape)} vs draft {tuple(q.shape)}")
        tvd = 0.5 * (p - q).abs().sum(-1).double()
        total += float((1.0 - tvd).sum())
        count += tvd.numel()
    return total / count


@dataclass
class Acceptance:
    """Teacher-forced acceptance of a draft on text (sums over positions, so they pool)."""

    alpha_sum: float
    """Sum of ``1 - TVD(p, q)``: expected acceptances of speculative sampling."""
    greedy_sum: float
    """Count of positions where the draft's argmax equals the teacher's (greedy acceptance)."""
    count: int

    @property
    def alpha(self) -> float:
        return self.alpha_sum / self.count if self.count else math.nan

    @property
    def alpha_greedy(self) -> float:
        return self.greedy_sum / self.count if self.count else math.nan


def acceptance_from_logits(
    teacher_logits: Tensor, draft_logits: Tensor, temperature: float = 1.0
) -> Acceptance:
    """Acceptance at every row of (n, V) logits: ``1 - TVD`` of the softmaxes at
    ``temperature`` and argmax agreement. Draft logits of -inf (a shortlist) get probability 0."""
    if teacher_logits.shape != draft_logits.shape or teacher_logits.dim() != 2:
        raise AttnkdError(
            f"teacher logits {tuple(teacher_logits.shape)} and draft logits "
            f"{tuple(draft_logits.shape)} must both be (n, vocab)"
        )
    if temperature <= 0:
        raise AttnkdError(f"temperature must be > 0 for acceptance, got {temperature}")
    p = torch.softmax(teacher_logits.float() / temperature, -1)
    q = torch.softmax(draft_logits.float() / temperature, -1)
    alpha = float(torch.minimum(p, q).sum(-1).double().sum())
    greedy = float((teacher_logits.argmax(-1) == draft_logits.argmax(-1)).sum())
    return Acceptance(alpha, greedy, int(teacher_logits.shape[0]))


@dataclass
class StepCosts:
    """Decoding-step times at batch 1 with a KV cache, measured side by side (medians)."""

    teacher_s: float
    """One single-token teacher step."""
    draft_s: float
    """One single-token draft step."""
    verify_s: dict[int, float]
    """γ -> one teacher call scoring γ + 1 new tokens."""
    context: int

    @property
    def cost_ratio(self) -> float:
        """c = draft step / teacher step."""
        return self.draft_s / self.teacher_s

    def verify_ratio(self, gamma: int) -> float:
        """v(γ) = verification call / single-token teacher step."""
        return self.verify_s[gamma] / self.teacher_s


def _step_time(model: nn.Module, prefix: list[int], new: list[int], repeats: int) -> float:
    """Median seconds of one call feeding ``new`` after a cached ``prefix``."""
    lm = CachedLM(model)
    lm.logits(prefix)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lm.logits(prefix + new, keep=len(new))  # as verification: every new row's logits
        times.append(time.perf_counter() - t0)
        lm.rollback(len(prefix))
    return statistics.median(times)


def measure_step_costs(
    teacher: nn.Module,
    draft: nn.Module,
    context: list[int],
    gammas: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8),
    repeats: int = 20,
    rounds: int = 3,
) -> StepCosts:
    """Teacher and draft step times after ``context`` (cached), and the teacher's γ + 1-token
    verification calls; models alternate each round so background load hits all alike."""
    if len(context) < 2:
        raise AttnkdError("measure_step_costs needs a context of at least 2 tokens")
    prefix, nxt = context[:-1], context[-1:]
    extra = [context[-1]] * (max(gammas) + 1)
    t, d, ver = [], [], {g: [] for g in gammas}
    for _ in range(rounds):
        t.append(_step_time(teacher, prefix, nxt, repeats))
        d.append(_step_time(draft, prefix, nxt, repeats))
        for g in gammas:
            ver[g].append(_step_time(teacher, prefix, extra[: g + 1], repeats))
    med = statistics.median
    return StepCosts(med(t), med(d), {g: med(v) for g, v in ver.items()}, len(context))
