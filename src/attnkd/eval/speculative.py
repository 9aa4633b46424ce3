"""Speculative decoding for Hugging Face causal LMs, batch 1, with KV caches.

Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a cheap draft q proposes
gamma tokens one at a time; the teacher p scores all of them in one call; draft token x is
accepted with probability ``min(1, p(x) / q(x))``; at the first rejection one token is drawn
from ``norm(max(0, p - q))`` and the block ends; if all gamma pass, a bonus token is drawn from
the teacher's next distribution. The output is distributed exactly as the teacher's own samples.
With ``temperature == 0`` the same loop does greedy verification: draft tokens are kept while
they equal the teacher's argmax, the first mismatch is replaced by the teacher's argmax, so the
output equals greedy teacher decoding token for token.

Both models keep a ``DynamicCache`` holding every token of the sequence except the last; after a
rejection the caches are cropped back to the accepted prefix. :func:`teacher_decode` is plain
teacher decoding through the same cache machinery, the baseline for side-by-side speed.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnkd.errors import AttnkdError


@dataclass
class DecodeResult:
    """What one decoding run produced and cost."""

    ids: list[int]
    """Generated token ids (prompt excluded)."""
    calls: int
    """Teacher forward calls, the prompt's prefill included."""
    seconds: float
    draft_calls: int = 0
    proposed: int = 0
    """Draft tokens the teacher checked (a block stops checking at its first rejection)."""
    accepted: int = 0
    expected_accept: float = 0.0
    """Sum over checked positions of ``sum_x min(p(x), q(x)) = 1 - TVD(p, q)`` (sampling), or of
    the accepted indicator (greedy): the expected count of ``accepted``, a lower-variance α."""
    blocks: list[int] = field(default_factory=list)
    """Tokens produced by each teacher call."""
    prefill_seconds: float = 0.0
    """Wall time until the teacher's first call returned (the prompt's prefill; in speculative
    decoding it also holds the first block's drafting and verification)."""

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def alpha(self) -> float:
        """Per-token acceptance: accepted / checked draft tokens (nan without drafts)."""
        return self.accepted / self.proposed if self.proposed else math.nan

    @property
    def tau(self) -> float:
        """Block efficiency: generated tokens per teacher call."""
        return self.tokens / self.calls if self.calls else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan

    @property
    def decode_seconds(self) -> float:
        """Wall time after the teacher's first call (the prompt's prefill)."""
        return self.seconds - self.prefill_seconds


class CachedLM:
    """A causal LM with a ``DynamicCache`` over a growing sequence (batch 1).

    :meth:`logits` feeds the tokens of ``seq`` not yet cached and returns the logits of the last
    ``keep`` positions; :meth:`rollback` crops the cache to a prefix length.
    """

    def __init__(self, model: nn.Module):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache()
        params = inspect.signature(model.forward).parameters
        # transformers 5.x names the argument `cache`; earlier releases `past_key_values`.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = "logits_to_keep" in params
        self.cached = 0
        self.calls = 0

    @torch.no_grad()
    def logits(self, seq: Sequence[int], keep: int = 1) -> Tensor:
        """Logits (keep, vocab) for the last ``keep`` positions of ``seq``."""
        new = list(seq[self.cached :])
        if len(new) < keep or not new:
            raise AttnkdError(
                f"cannot return {keep} positions: only {len(new)} tokens are not cached yet"
            )
        device = next(self.model.parameters()).device
        ids = torch.tensor([new], dtype=torch.long, device=device)
        kwargs = {self._cache_arg: self.cache, "use_cache": True}
        if self._keep_arg:
            kwargs["logits_to_keep"] = keep
        out = self.model(input_ids=ids, **kwargs)
        self.cached = len(seq)
        self.calls += 1
        return out.logits[0, -keep:].float()

    def rollback(self, length: int) -> None:
        """Keep only the first ``length`` tokens in the cache."""
        drop = self.cached - length
        if drop < 0:
            raise AttnkdError(f"cannot roll back to {length} tokens: only {self.cached} cached")
        if drop:
            self.cache.crop(-drop)  # a negative count removes that many tokens
            self.cached = length


def probs(logits: Tensor, temperature: float) -> Tensor:
    """softmax(logits / temperature) in float32 (``temperature > 0``)."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def _sample(p: Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(p, 1, generator=generator))


def residual(p: Tensor, q: Tensor) -> Tensor:
    """``norm(max(0, p - q))``: where a rejected position samples from (p if p == q)."""
    r = torch.clamp(p - q, min=0.0)
    total = r.sum()
    return r / total if total > 0 else p


def verify_sampling(
    p: Tensor, q: Tensor, drafted: Sequence[int], generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Speculative-sampling verification of one block.

    ``p`` (gamma + 1, V) teacher probabilities at the drafted positions and the bonus position,
    ``q`` (gamma, V) draft probabilities the tokens were drawn from. Returns ``(accepted, next)``:
    how many drafted tokens are kept and the one token the teacher adds after them.
    """
    for i, x in enumerate(drafted):
        u = float(torch.rand((), generator=generator))
        if u * float(q[i, x]) < float(p[i, x]):  # u < p/q, without dividing
            continue
        return i, _sample(residual(p[i], q[i]), generator)
    return len(drafted), _sample(p[len(drafted)], generator)


def verify_greedy(teacher_logits: Tensor, drafted: Sequence[int]) -> tuple[int, int]:
    """Greedy verification: keep drafted tokens while they equal the teacher's argmax.

    ``teacher_logits`` (gamma + 1, V). Returns ``(accepted, next)`` with ``next`` the teacher's
    argmax after the kept tokens.
    """
    best = teacher_logits.argmax(dim=-1).tolist()
    for i, x in enumerate(drafted):
        if x != best[i]:
            return i, best[i]
    return len(drafted), best[len(drafted)]


def _check(prompt: Sequence[int], max_new_tokens: int, temperature: float) -> None:
    if len(prompt) < 1:
        raise AttnkdError("the prompt must hold at least one token")
    if max_new_tokens < 1:
        raise AttnkdError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature >= 0:
        raise AttnkdError(f"temperature must be >= 0 (0 = greedy), got {temperature}")


def _stop(ids: list[int], limit: int, eos: int | None) -> bool:
    return len(ids) >= limit or (eos is not None and eos in ids)


def _trim(ids: list[int], limit: int, eos: int | None) -> list[int]:
    ids = ids[:limit]
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    return ids


def teacher_decode(
    teacher: nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
) -> DecodeResult:
    """Plain decoding, one teacher call per token (the first call prefills the prompt)."""
    _check(prompt, max_new_tokens, temperature)
    t0 = time.perf_counter()
    lm = CachedLM(teacher)
    seq = list(prompt)
    out: list[int] = []
    prefill = 0.0
    while not _stop(out, max_new_tokens, eos_token_id):
        logits = lm.logits(seq)[-1]
        prefill = prefill or time.perf_counter() - t0
        if temperature == 0:
            x = int(logits.argmax())
        else:
            x = _sample(probs(logits, temperature), generator)
        seq.append(x)
        out.append(x)
    seconds = time.perf_counter() - t0
    return DecodeResult(out, lm.calls, seconds, blocks=[1] * lm.calls, prefill_seconds=prefill)


def speculative_decode(
    teacher: nn.Module,
    draft: nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    gamma: int = 4,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
) -> DecodeResult:
    """Generate up to ``max_new_tokens`` tokens after ``prompt`` by speculative decoding.

    ``temperature > 0``: speculative sampling, output distributed as the teacher's samples at
    that temperature; ``temperature == 0``: greedy verification, output equal to greedy teacher
    decoding. The draft must share the teacher's vocabulary (same logits width). Near the end
    a block drafts at most ``remaining - 1`` tokens, which leaves the output law unchanged.
    """
    _check(prompt, max_new_tokens, temperature)
    if gamma < 1:
        raise AttnkdError(f"gamma (draft tokens per block) must be >= 1, got {gamma}")
    t0 = time.perf_counter()
    t, d = CachedLM(teacher), CachedLM(draft)
    seq = list(prompt)
    res = DecodeResult([], 0, 0.0)
    width = 0
    while not _stop(res.ids, max_new_tokens, eos_token_id):
        g = min(gamma, max_new_tokens - len(res.ids) - 1)
        drafted: list[int] = []
        qs: list[Tensor] = []
        for _ in range(g):
            logits = d.logits(seq + drafted)[-1]
            width = logits.shape[-1]
            if temperature == 0:
                drafted.append(int(logits.argmax()))
            else:
                qs.append(probs(logits, temperature))
                drafted.append(_sample(qs[-1], generator))
            if eos_token_id is not None and drafted[-1] == eos_token_id:
                break
        g = len(drafted)
        logits = t.logits(seq + drafted, keep=g + 1)
        res.prefill_seconds = res.prefill_seconds or time.perf_counter() - t0
        if g and logits.shape[-1] != width:
            raise AttnkdError(
                f"the draft's logits have {width} entries, the teacher's {logits.shape[-1]}: "
                "a draft must share the teacher's vocabulary"
            )
        if temperature == 0:
            a, nxt = verify_greedy(logits, drafted)
            res.expected_accept += a
        else:
            p = probs(logits, temperature)
            q = torch.stack(qs) if qs else p[:0]
            a, nxt = verify_sampling(p, q, drafted, generator)
            checked = min(a + 1, g)
            res.expected_accept += float(torch.minimum(p[:checked], q[:checked]).sum())
        res.proposed += min(a + 1, g)
        res.accepted += a
        new = drafted[:a] + [nxt]
        seq += new
        res.ids += new
        res.blocks.append(len(new))
        t.rollback(len(seq) - 1)
        d.rollback(min(d.cached, len(seq) - 1))
    res.ids = _trim(res.ids, max_new_tokens, eos_token_id)
    res.calls, res.draft_calls = t.calls, d.calls
    res.seconds = time.perf_counter() - t0
    return res
