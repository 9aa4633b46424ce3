"""``attnkd eval RUN --speculative``: a draft measured by speculative decoding of its teacher.

One run reports, side by side on the same prompts: greedy speculative vs greedy teacher output
(``greedy_equal``), acceptance α and block efficiency τ of speculative decoding at the chosen
temperature, wall-clock tokens/s of speculative decoding and of plain teacher decoding
(interleaved prompt by prompt, so background load hits both alike; ``speedup`` is their ratio),
1 - mean TVD on teacher-forced text, the measured step-cost ratio c, the break-even α for γ and
the γ the speed-up model would pick from the measured α and costs. Prompts are taken from
held-out text (the last 10% of Tiny Shakespeare's characters by default).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from attnkd.errors import AttnkdError, ConfigError
from attnkd.eval.draft_alpha import AlphaProbe
from attnkd.eval.drafts import parse_draft_spec, self_draft, token_shortlist, with_shortlist
from attnkd.eval.lm_protocol import held_out, text_as_written
from attnkd.eval.spec_cost import (
    break_even_alpha,
    choose_gamma,
    measure_step_costs,
)
from attnkd.eval.speculative import DecodeResult, speculative_decode, teacher_decode


@dataclass
class SpecSettings:
    gamma: int = 4
    """Draft tokens per block; 0 = choose it (1..8) by the speed-up model from the teacher-forced
    α on the prompts (argmax agreement when greedy) and the measured step costs c, v(γ)."""
    temperature: float = 1.0
    """> 0: speculative sampling at this temperature; 0: greedy verification only."""
    prompts: int = 4
    prompt_tokens: int = 64
    new_tokens: int = 64
    text: str = "tinyshakespeare"
    """Prompts and teacher-forced blocks come from the last 10% of this text's characters."""
    shortlist: int = 0
    """> 0: the draft's output layer scores only this many most frequent tokens of the text's
    first 90%."""
    seed: int = 0
    cost_repeats: int = 5
    """Timed calls per step-cost measurement (median of 3 interleaved rounds of medians)."""
    packed: bool = False
    """Pre-pack every linear layer of the teacher and the draft with oneDNN
    (:mod:`attnkd.eval.cpu_linear`; CPU, float32) before anything is timed."""


def _check(s: SpecSettings) -> None:
    if s.gamma < 0:
        raise ConfigError("gamma", f"must be >= 1, or 0 to choose it, got {s.gamma}")
    for key in ("prompts", "prompt_tokens", "new_tokens"):
        if getattr(s, key) < 1:
            raise ConfigError(key, f"must be >= 1, got {getattr(s, key)}")
    if not s.temperature >= 0:
        raise ConfigError("temperature", f"must be >= 0 (0 = greedy), got {s.temperature}")
    if s.shortlist < 0:
        raise ConfigError("shortlist", f"must be >= 0 (0 = full vocabulary), got {s.shortlist}")


def held_out_ids(tok, settings: SpecSettings, data_dir) -> tuple[list[int], list[int]]:
    text = text_as_written(settings.text, data_dir)
    tail = held_out(text, 0.1)
    train = text[: len(text) - len(tail)]
    enc = tok([tail, train], add_special_tokens=False, verbose=False)["input_ids"]
    return enc[0], enc[1]


def spaced_prompts(ids: list[int], n: int, length: int) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens at evenly spaced starts of ``ids``."""
    if len(ids) < n * length:
        raise AttnkdError(f"held-out text has {len(ids)} tokens, fewer than {n} x {length}")
    step = len(ids) // n
    return [ids[i * step : i * step + length] for i in range(n)]


def pooled_results(results: list[DecodeResult]) -> dict:
    tokens = sum(r.tokens for r in results)
    seconds = sum(r.seconds for r in results)
    calls = sum(r.calls for r in results)
    proposed = sum(r.proposed for r in results)
    out = {"tokens": tokens, "seconds": seconds, "teacher_calls": calls}
    out["tokens_per_s"] = tokens / seconds if seconds else math.nan
    # After the teacher's first call (the prompt's prefill): its tokens and time left out.
    decode = sum(r.decode_seconds for r in results)
    later = tokens - sum(min(r.blocks[0], r.tokens) for r in results if r.blocks)
    out["prefill_seconds"] = seconds - decode
    out["decode_tokens_per_s"] = later / decode if decode > 0 else math.nan
    if proposed:
        out["alpha"] = sum(r.accepted for r in results) / proposed
        out["alpha_expected"] = sum(r.expected_accept for r in results) / proposed
        out["tau"] = tokens / calls
        out["draft_calls"] = sum(r.draft_calls for r in results)
    return out


def speculative_report(
    teacher: nn.Module, draft: nn.Module, prompts: list[list[int]], s: SpecSettings
) -> dict:
    """Greedy equality, α, τ, tokens/s side by side, TVD acceptance and step costs."""
    blocks = torch.tensor([p for p in prompts])
    acc = AlphaProbe(teacher, blocks, s.temperature or 1.0).acceptance(draft)
    costs = measure_step_costs(
        teacher, draft, prompts[0], gammas=tuple(range(1, 9)), repeats=s.cost_repeats
    )
    c = costs.cost_ratio
    v_all = {g: costs.verify_ratio(g) for g in costs.verify_s}
    chosen = s.gamma == 0
    if chosen:  # the speed-up model's best γ for the teacher-forced α and the measured costs
        forced = acc.alpha if s.temperature > 0 else acc.alpha_greedy
        s = replace(s, gamma=choose_gamma(forced, c, v_all))
    greedy_equal, timed_plain, timed_spec = True, [], []
    g_plain = torch.Generator().manual_seed(s.seed)
    g_spec = torch.Generator().manual_seed(s.seed + 1)
    for prompt in prompts:
        plain = teacher_decode(teacher, prompt, s.new_tokens, temperature=0)
        fast = speculative_decode(teacher, draft, prompt, s.new_tokens, s.gamma, temperature=0)
        greedy_equal = greedy_equal and plain.ids == fast.ids
        if s.temperature > 0:
            plain = teacher_decode(teacher, prompt, s.new_tokens, s.temperature, g_plain)
            fast = speculative_decode(
                teacher, draft, prompt, s.new_tokens, s.gamma, s.temperature, g_spec
            )
        timed_plain.append(plain)
        timed_spec.append(fast)
    spec, base = pooled_results(timed_spec), pooled_results(timed_plain)
    v = v_all[s.gamma]
    alpha = spec["alpha"]
    return {
        "gamma": s.gamma,
        "gamma_chosen": chosen,
        "alpha": alpha,
        "tau": spec["tau"],
        "cost_ratio": c,
        "verify_ratio": v,
        "speedup": spec["tokens_per_s"] / base["tokens_per_s"],
        "greedy_equal": greedy_equal,
        "alpha_teacher_forced": acc.alpha,
        "alpha_greedy_teacher_forced": acc.alpha_greedy,
        "break_even_alpha": break_even_alpha(s.gamma, c, v),
        "modelled_speedup": spec["tau"] / (s.gamma * c + v),
        "best_gamma": choose_gamma(alpha, c, v_all),
        "speculative": spec,
        "teacher": base,
        "step_seconds": {
            "teacher": costs.teacher_s,
            "draft": costs.draft_s,
            "verify": {str(g): t for g, t in costs.verify_s.items()},
            "context": costs.context,
        },
        "tokens_per_call_median": statistics.median(sum((r.blocks for r in timed_spec), [])),
    }


def evaluate_speculative(
    run: str | Path,
    teacher: str | None = None,
    draft: str | None = None,
    settings: SpecSettings | None = None,
    data_dir: str | None = None,
) -> dict:
    """Speculative decoding of the teacher with a draft: the run's student (default), the
    teacher's own first K layers (``draft='self:K'``) or another model (name or folder).

    ``run`` is a run folder (its config names the teacher) or, with a self-draft or an explicit
    draft, the teacher model itself (name or folder).
    """
    from attnkd.config.io import load_config
    from attnkd.models.load import freeze, load_causal_lm

    s = settings or SpecSettings()
    _check(s)
    run = Path(run)
    student = None
    if (run / "config.yaml").exists():
        teacher = teacher or load_config(run / "config.yaml").teacher.name
        student = run / "student" if (run / "student" / "config.json").exists() else None
    else:
        teacher = teacher or str(run)
    kind, layers = parse_draft_spec(draft or "student")
    if kind == "student" and student is None:
        raise AttnkdError(f"{run}: no run student/ to draft with; use --draft self:K or a model")
    t = load_causal_lm(teacher)
    freeze(t.model)
    if kind == "self":
        d = self_draft(t.model, layers)
        draft_name = f"self:{layers}"
    else:
        path = str(student) if kind == "student" else kind
        d = freeze(load_causal_lm(path, tokenizer=False).model)
        draft_name = path
    held, train = held_out_ids(t.tokenizer, s, data_dir)
    if s.shortlist:
        eos = [t.tokenizer.eos_token_id] if t.tokenizer.eos_token_id is not None else []
        vocab = int(t.model.config.vocab_size)
        d = with_shortlist(d, token_shortlist(train, s.shortlist, vocab, always=eos))
    if s.packed:  # the draft first: a self-draft's layers are the teacher's own modules
        from attnkd.eval.cpu_linear import pack_linears

        pack_linears(d)
        pack_linears(t.model)
    prompts = spaced_prompts(held, s.prompts, s.prompt_tokens)
    out = {"teacher": teacher, "draft": draft_name, "shortlist": s.shortlist}
    out["settings"] = {k: getattr(s, k) for k in s.__dataclass_fields__}
    out.update(speculative_report(t.model, d, prompts, s))
    return out
