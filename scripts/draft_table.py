"""Speculative-decoding drafts for SmolLM2-135M-Instruct: train them, then judge them side by side.

Phase ``train``: every draft variant is trained in ONE process on the same batches, so they all
get the same budget. The batches come from the training part of every ``--sources`` text (each
text split on its own: its last 10% of tokens never train, the 5% before them select); the
learning rate warms up, then decays linearly with the budget spent (steps or ``--max-minutes``,
whichever runs out first) and the teacher's forward pass on a batch is shared (it dominates the cost
on CPU). A draft is 1-3 of the teacher's layers (weights inherited), the teacher's final norm and
its tied, frozen embeddings; its output layer scores a frequency-ranked shortlist S of tokens
(counted on the training blocks). Training compares the draft's softmax over S with the teacher's
next-token distribution renormalised over S (both models' logits restricted to S), with one of
fkl / rkl / jsd(β = 0.5) / tvd (GKD, DistillSpec) or, for the baseline, cross-entropy with the
data's next tokens (positions whose next token lies outside S are ignored). On-policy variants
replace a fraction λ of each batch's rows by their first ``--prefix`` tokens and a continuation
sampled from the current draft (the teacher scores those rows; no gradient through sampling).
Every ``--eval-every`` steps each variant's teacher-forced acceptance α = 1 - TVD(p, q) on the
selection blocks is logged and the best-α weights are kept (``train.select_metric: alpha``).

Phase ``table``: for each held-out text (last 10% of the characters of Tiny Shakespeare and of
WikiText-2 valid) and each draft (untrained, trained): perplexity (windows of 256 over the first
``--ppl-tokens`` held-out tokens; the draft with its full tied head), teacher-forced α (greedy
and T = 1), the share of the teacher's mass inside S, the measured cost ratio c and verify ratio
v(γ) (made >= 1 and non-decreasing in γ: ``monotone_verify_ratios``), γ chosen from α, c and
v, break-even α, then speculative decoding at γ vs plain teacher decoding interleaved prompt
by prompt (greedy and T = 1): α, τ, tokens/s ratio (end to end, and after the prompt's
prefill), greedy equality. With ``--packed`` (the default where the build has
oneDNN) every timed model's linear layers are pre-packed (:mod:`attnkd.eval.cpu_linear`), plain
teacher and drafts alike; the step costs with PyTorch's default linear are recorded beside.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/draft_table.py --phase train --out runs/drafts-v2 \\
        --steps 900 --eval-every 25 --max-minutes 70
    OMP_NUM_THREADS=1 python scripts/draft_table.py --phase table --out runs/drafts-v2 \\
        --json results/draft_table.json --prompts 8 --new-tokens 64 --ppl-tokens 1024 \\
        --alpha-blocks 4 --cost-repeats 10
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from attnkd.atomic import write_json
from attnkd.data.lm import (
    LMBatches,
    drop_held_out_copies,
    lm_texts,
    split_blocks,
    tokenize_lines,
)
from attnkd.data.onpolicy import mix_on_policy
from attnkd.eval.cpu_linear import pack_linears, packing_available
from attnkd.eval.drafts import (
    shortlist_targets,
    token_shortlist,
    with_shortlist,
    with_subset_head,
)
from attnkd.eval.lm_protocol import WindowProtocol, window_perplexity
from attnkd.eval.spec_cost import (
    Acceptance,
    acceptance_from_logits,
    break_even_alpha,
    choose_gamma,
    measure_step_costs,
    monotone_verify_ratios,
)
from attnkd.eval.spec_eval import SpecSettings, held_out_ids, pooled_results, spaced_prompts
from attnkd.eval.speculative import speculative_decode, teacher_decode
from attnkd.losses.logits import token_divergence
from attnkd.models.load import freeze, load_causal_lm
from attnkd.students.build import build_student

log = logging.getLogger("draft_table")
TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"
LAYERS = {1: [0], 2: [0, 29], 3: [0, 15, 29]}


@dataclass
class Variant:
    name: str
    depth: int
    loss: str  # 'ce', 'fkl', 'rkl', 'jsd', 'tvd'
    onpolicy: float = 0.0
    model: torch.nn.Module | None = None
    train_view: torch.nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    best_alpha: float = -1.0
    best_step: int = 0
    best_state: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    loss_sum: float = 0.0
    loss_n: int = 0
    gen_seconds: float = 0.0
    gen_tokens: int = 0


def parse_variants(spec: str) -> list[Variant]:
    """'2:ce,2:tvd,2:tvd@0.25' -> variants (depth:loss[@lambda])."""
    out = []
    for item in spec.split(","):
        depth, _, rest = item.partition(":")
        loss, _, lam = rest.partition("@")
        v = Variant(f"L{depth}-{loss}" + (f"-onpolicy{lam}" if lam else ""), int(depth), loss)
        v.onpolicy = float(lam) if lam else 0.0
        out.append(v)
    return out


def make_draft(teacher, depth: int) -> torch.nn.Module:
    student, _ = build_student(teacher, LAYERS[depth], attn_implementation="sdpa")
    for p in student.parameters():
        p.requires_grad_(False)
    for name, p in student.named_parameters():
        if ".layers." in name or name.endswith("norm.weight"):
            p.requires_grad_(True)
    return student


def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def variant_loss(v: Variant, ids: torch.Tensor, zt: torch.Tensor, shortlist) -> torch.Tensor:
    zs = v.train_view(input_ids=ids).logits.float()
    if v.loss == "ce":
        y = shortlist_targets(ids[:, 1:], shortlist, 49152)
        return F.cross_entropy(
            zs[:, :-1].reshape(-1, zs.shape[-1]), y.reshape(-1), ignore_index=-100
        )
    return token_divergence(zs, zt, kind=v.loss, beta=0.5, impl="naive")


@torch.no_grad()
def forced_acceptance(t_logits: list[torch.Tensor], draft, blocks: torch.Tensor) -> Acceptance:
    total = Acceptance(0.0, 0.0, 0)
    for zt, row in zip(t_logits, blocks, strict=True):
        zd = draft(input_ids=row[None]).logits[0, :-1]
        a = acceptance_from_logits(zt, zd)
        total = Acceptance(
            total.alpha_sum + a.alpha_sum, total.greedy_sum + a.greedy_sum, total.count + a.count
        )
    return total


@torch.no_grad()
def teacher_logits(teacher, blocks: torch.Tensor) -> list[torch.Tensor]:
    return [teacher(input_ids=row[None]).logits[0, :-1].float() for row in blocks]


def train(args, teacher, tok) -> dict:
    train_blocks, select = training_blocks(tok, args.sources.split(","), args)
    shortlist = token_shortlist(train_blocks, args.shortlist, 49152, always=[tok.eos_token_id])
    t_select = teacher_logits(teacher, select)
    in_s = torch.zeros(49152, dtype=torch.bool)
    in_s[shortlist] = True
    mass = float(torch.cat([torch.softmax(z, -1)[:, in_s].sum(-1) for z in t_select]).mean())
    log.info(
        "%d train blocks; shortlist of %d tokens holds %.3f of the teacher's mass on the "
        "selection blocks",
        len(train_blocks),
        len(shortlist),
        mass,
    )
    t_sub = with_subset_head(teacher, shortlist)
    variants = parse_variants(args.variants)
    for v in variants:
        v.model = make_draft(teacher, v.depth)
        v.train_view = with_subset_head(v.model, shortlist)
        params = [p for p in v.model.parameters() if p.requires_grad]
        v.opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    batches = LMBatches(train_blocks, args.batch, seed=0)
    gen = torch.Generator().manual_seed(1)
    warm = max(1, int(0.05 * args.steps))
    t0 = time.time()
    teacher_s = 0.0
    stop = args.steps
    lr = 0.0
    for step in range(args.steps + 1):
        progress = budget_progress(step, args.steps, time.time() - t0, args.max_minutes)
        if progress >= 1.0 and step < stop:
            stop = step  # out of time: every variant stops at this same step
            log.info(
                "--max-minutes %.0f reached: stopping all variants at step %d",
                args.max_minutes,
                step,
            )
        if step % args.eval_every == 0 or step == stop:
            for v in variants:
                v.model.eval()
                a = forced_acceptance(t_select, with_shortlist(v.model, shortlist), select)
                v.model.train()
                rec = {
                    "step": step,
                    "alpha": a.alpha,
                    "alpha_greedy": a.alpha_greedy,
                    "loss": v.loss_sum / max(v.loss_n, 1),
                    "gen_seconds": v.gen_seconds,
                    "seconds": time.time() - t0,
                    "lr": lr if step else 0.0,
                }
                v.history.append(rec)
                v.loss_sum, v.loss_n = 0.0, 0
                if a.alpha > v.best_alpha:
                    v.best_alpha, v.best_step = a.alpha, step
                    v.best_state = trainable_state(v.model)
            log.info(
                "step %d (%.0fs, teacher %.0fs): %s",
                step,
                time.time() - t0,
                teacher_s,
                " ".join(f"{v.name}={v.history[-1]['alpha']:.3f}" for v in variants),
            )
        if step == stop:
            break
        epoch, index = divmod(step, batches.num_batches)
        ids = batches.batch_at(epoch, index)["input_ids"]
        ts = time.time()
        with torch.no_grad():
            zt = t_sub(input_ids=ids).logits.float()
        teacher_s += time.time() - ts
        lr = args.lr * min((step + 1) / warm, 1.0 - progress)
        for v in variants:
            for g in v.opt.param_groups:
                g["lr"] = lr
            x, z = ids, zt
            if v.onpolicy > 0:
                v.model.eval()
                mixed = mix_on_policy(
                    ids, with_shortlist(v.model, shortlist), v.onpolicy, args.prefix, 1.0, gen
                )
                v.model.train()
                v.gen_seconds += mixed.seconds
                v.gen_tokens += mixed.generated_tokens
                x, z = mixed.input_ids, zt.clone()
                ts = time.time()
                with torch.no_grad():
                    z[mixed.rows] = t_sub(input_ids=x[mixed.rows]).logits.float()
                teacher_s += time.time() - ts
            loss = variant_loss(v, x, z, shortlist)
            v.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for p in v.model.parameters() if p.requires_grad], 1.0
            )
            v.opt.step()
            v.loss_sum += float(loss.detach())
            v.loss_n += 1
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    info = {
        "steps": stop,
        "planned_steps": args.steps,
        "batch": args.batch,
        "length": args.length,
        "lr": args.lr,
        "shortlist": args.shortlist,
        "prefix": args.prefix,
        "select_blocks": args.select_blocks,
        "train_seconds": time.time() - t0,
        "teacher_seconds": teacher_s,
        "train_tokens": stop * args.batch * args.length,
        "sources": args.sources.split(","),
        "train_blocks": len(train_blocks),
        "variants": {},
    }
    for v in variants:
        save_file(
            {k: t.contiguous() for k, t in v.best_state.items()},
            str(out_dir / f"{v.name}.safetensors"),
        )
        info["variants"][v.name] = {
            "depth": v.depth,
            "layers": LAYERS[v.depth],
            "loss": v.loss,
            "onpolicy": v.onpolicy,
            "best_step": v.best_step,
            "select_alpha": v.best_alpha,
            "history": v.history,
            "generation_seconds": v.gen_seconds,
            "generated_tokens": v.gen_tokens,
        }
    torch.save(shortlist, out_dir / "shortlist.pt")
    write_json(out_dir / "train.json", info)
    return info


def budget_progress(step: int, steps: int, seconds: float, max_minutes: float) -> float:
    """How much of the training budget is spent, in [0, 1+): the larger of the step fraction
    and (with ``max_minutes`` > 0) the wall-time fraction. The learning rate decays linearly
    with it, so a run cut short by the clock still ends at a low learning rate."""
    done = step / steps
    if max_minutes > 0:
        done = max(done, seconds / (60.0 * max_minutes))
    return done


def training_blocks(tok, sources: list[str], args) -> tuple[torch.Tensor, torch.Tensor]:
    """Training blocks of every source (each source split on its own, so each keeps its last
    10% of tokens held out and the 5% before them for selection; blocks repeating held-out
    lines are dropped) and the first ``args.select_blocks`` selection blocks of each source."""
    train, select = [], []
    for source in sources:
        stream = tokenize_lines(tok, lm_texts([source], None))
        splits = drop_held_out_copies(split_blocks(stream.ids, args.length, 0.05, 0.1), stream)
        train.append(splits.train)
        select.append(splits.select[: args.select_blocks])
        log.info("%s: %d train blocks, %d select blocks", source, len(splits.train),
                 len(splits.select))  # fmt: skip
    return torch.cat(train), torch.cat(select)


def load_drafts(args, teacher, info: dict) -> list[tuple[str, dict, torch.nn.Module]]:
    from safetensors.torch import load_file

    drafts = []
    for depth in sorted({v["depth"] for v in info["variants"].values()}):
        d = make_draft(teacher, depth)
        drafts.append(
            (f"L{depth}-untrained", {"depth": depth, "loss": "none", "onpolicy": 0.0}, freeze(d))
        )
    for name, meta in info["variants"].items():
        d = make_draft(teacher, meta["depth"])
        state = load_file(str(Path(args.out) / f"{name}.safetensors"))
        missing = d.load_state_dict(state, strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys
        drafts.append((name, meta, freeze(d)))
    return drafts


def _decode_side_by_side(teacher, drafts: dict, prompts, args, temperature: float) -> dict:
    """Plain teacher decoding and speculative decoding with every draft in ``drafts``
    (name -> (model, gamma)), interleaved prompt by prompt so background load hits all alike.
    Returns name -> {alpha, tau, speedup, ...} (speedup: pooled tokens/s over the plain one)."""
    plain, spec, equal = [], {n: [] for n in drafts}, dict.fromkeys(drafts, True)
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(args.seed + i)
        base = teacher_decode(teacher, prompt, args.new_tokens, temperature, gen)
        plain.append(base)
        for name, (model, gamma) in drafts.items():
            gen = torch.Generator().manual_seed(args.seed + 1000 + i)
            r = speculative_decode(teacher, model, prompt, args.new_tokens, gamma, temperature, gen)
            spec[name].append(r)
            equal[name] = equal[name] and (temperature > 0 or r.ids == base.ids)
    p = pooled_results(plain)
    out = {}
    for name, (_, gamma) in drafts.items():
        s = pooled_results(spec[name])
        out[name] = {
            "gamma": gamma,
            "alpha": s["alpha"],
            "tau": s["tau"],
            "speedup": s["tokens_per_s"] / p["tokens_per_s"],
            "speedup_after_prefill": s["decode_tokens_per_s"] / p["decode_tokens_per_s"],
            "spec_tokens_per_s": s["tokens_per_s"],
            "teacher_tokens_per_s": p["tokens_per_s"],
            "tokens": s["tokens"],
        }
        if temperature == 0:
            out[name]["greedy_equal"] = equal[name]
    return out


def _costs_record(m) -> dict:
    return {
        "teacher_step_s": m.teacher_s,
        "draft_step_s": m.draft_s,
        "cost_ratio": m.cost_ratio,
        "verify_ratio": {g: m.verify_ratio(g) for g in m.verify_s},
    }


def table(args, teacher, tok, info: dict, save=lambda rows: None, notes=None) -> list[dict]:
    notes = {} if notes is None else notes
    shortlist = torch.load(Path(args.out) / "shortlist.pt")
    drafts = load_drafts(args, teacher, info)
    in_s = torch.zeros(49152, dtype=torch.bool)
    in_s[shortlist] = True
    views = {name: with_shortlist(model, shortlist) for name, _, model in drafts}
    if args.packed:
        # The same step costs with PyTorch's default CPU linear first, for the record (why the
        # table packs: verification of a few tokens costs far more than one step without it).
        first = SpecSettings(text=args.texts.split(",")[0])
        ctx = held_out_ids(tok, first, None)[0][: args.prompt_tokens]
        m = measure_step_costs(
            teacher, views[drafts[0][0]], ctx, gammas=tuple(range(1, 7)),
            repeats=args.cost_repeats,
        )  # fmt: skip
        notes["default_linear_costs"] = {"draft": drafts[0][0], **_costs_record(m)}
        log.info("default linear: %s", notes["default_linear_costs"])
        n = pack_linears(teacher)
        n += sum(pack_linears(views[name]) + pack_linears(d) for name, _, d in drafts)
        log.info("packed %d linear layers (oneDNN) in the teacher and the drafts", n)
    notes["packed_linear"] = bool(args.packed)
    costs: dict[int, tuple[float, dict]] = {}  # depth -> (c, v(γ)): same architecture, same cost
    rows = []
    for t_index, text in enumerate(args.texts.split(",")):
        s = SpecSettings(
            text=text,
            prompts=args.prompts,
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
        )
        held, _ = held_out_ids(tok, s, None)
        n_blocks = args.alpha_blocks
        blocks = torch.tensor(held[: n_blocks * args.length]).view(n_blocks, args.length)
        t_logits = teacher_logits(teacher, blocks)
        mass_s = float(torch.cat([torch.softmax(z, -1)[:, in_s].sum(-1) for z in t_logits]).mean())
        ppl_ids = torch.tensor(held[: args.ppl_tokens])
        proto = WindowProtocol(256, 256)
        prompts = spaced_prompts(held, args.prompts, args.prompt_tokens)
        t_ppl = window_perplexity(teacher, ppl_ids, proto).ppl
        log.info("%s: teacher ppl %.2f, teacher mass in shortlist %.3f", text, t_ppl, mass_s)
        rows.append(
            {
                "text": text,
                "draft": "teacher",
                "perplexity": t_ppl,
                "teacher_mass_in_shortlist": mass_s,
                "held_out_tokens_in_shortlist": float(in_s[torch.tensor(held)].float().mean()),
            }
        )
        decode = {0.0: {}, 1.0: {}}
        text_rows = []
        for name, meta, model in drafts:
            d = views[name]
            if meta["depth"] not in costs:
                m = measure_step_costs(
                    teacher, d, prompts[0], gammas=tuple(range(1, 7)), repeats=args.cost_repeats
                )
                v_used = monotone_verify_ratios({g: m.verify_ratio(g) for g in m.verify_s})
                costs[meta["depth"]] = (m.cost_ratio, v_used)
                rec = {**_costs_record(m), "verify_ratio_used": v_used}
                notes.setdefault("costs", {})[str(meta["depth"])] = rec
                log.info(
                    "depth %d: c %.3f v %s",
                    meta["depth"],
                    m.cost_ratio,
                    {g: round(x, 2) for g, x in costs[meta["depth"]][1].items()},
                )
            c, v = costs[meta["depth"]]
            acc = forced_acceptance(t_logits, d, blocks)
            row = {
                "text": text,
                "draft": name,
                **{k: meta[k] for k in ("depth", "loss", "onpolicy")},
                "perplexity_full_head": window_perplexity(model, ppl_ids, proto).ppl,
                "alpha_tf": acc.alpha,
                "alpha_greedy_tf": acc.alpha_greedy,
                "cost_ratio": c,
                "verify_ratio": v,
            }
            wanted = args.decode if t_index == 0 else args.decode_more
            for mode, temp, alpha in (("greedy", 0.0, acc.alpha_greedy), ("t1", 1.0, acc.alpha)):
                gamma = choose_gamma(alpha, c, v, max_gamma=6)
                row[mode] = {
                    "gamma_chosen": gamma,
                    "break_even_alpha": break_even_alpha(gamma, c, v[gamma]),
                    "modelled_speedup": _modelled(alpha, gamma, c, v[gamma]),
                    f"alpha_for_{args.target:g}x": alpha_for_speedup(args.target, c, v),
                }
                if wanted == "all" or name in wanted.split(","):
                    decode[temp][name] = (d, gamma)
            log.info(
                "%s %s: ppl %.1f alpha_tf %.3f greedy %.3f",
                text,
                name,
                row["perplexity_full_head"],
                acc.alpha,
                acc.alpha_greedy,
            )
            text_rows.append(row)
            save(rows + text_rows)
        for mode, temp in (("greedy", 0.0), ("t1", 1.0)):
            if decode[temp]:
                got = _decode_side_by_side(teacher, decode[temp], prompts, args, temp)
                for row in text_rows:
                    row[mode].update(got.get(row["draft"], {}))
                log.info(
                    "%s %s decoding: %s",
                    text,
                    mode,
                    json.dumps(
                        {
                            n: {k: round(x, 3) for k, x in r.items() if isinstance(x, float)}
                            for n, r in got.items()
                        }
                    ),
                )
                save(rows + text_rows)
        rows += text_rows
        save(rows)
    return rows


def alpha_for_speedup(target: float, c: float, v: dict[int, float]) -> float:
    """The lowest α at which some γ's modelled speed-up reaches ``target`` (inf if none)."""
    from attnkd.eval.spec_cost import expected_speedup

    best = math.inf
    for g, vg in v.items():
        if expected_speedup(1.0, g, c, vg) < target:
            continue
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if expected_speedup(mid, g, c, vg) < target else (lo, mid)
        best = min(best, hi)
    return best


def trend(info: dict, target_alpha: float) -> dict:
    """Per trained variant: a least-squares fit α ≈ a + b·ln(training tokens) over the logged
    evaluations after step 0, and the tokens it would need to reach ``target_alpha`` (a crude
    extrapolation of a short curve, for sizing the next run, not a measurement)."""
    out = {}
    per_step = info["batch"] * info["length"]
    for name, meta in info["variants"].items():
        pts = [(math.log(h["step"] * per_step), h["alpha"]) for h in meta["history"] if h["step"]]
        if len(pts) < 2:
            continue
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        b = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
        a = my - b * mx
        need = math.exp((target_alpha - a) / b) if b > 0 else math.inf
        out[name] = {"a": a, "b_per_ln_token": b, "tokens_for_target_alpha": need}
    return out


def _modelled(alpha: float, gamma: int, c: float, v: float) -> float:
    from attnkd.eval.spec_cost import expected_speedup

    return expected_speedup(min(max(alpha, 0.0), 1.0), gamma, c, v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phase", choices=["train", "table", "both"], default="both")
    ap.add_argument("--out", default="runs/drafts")
    ap.add_argument("--json", default="results/draft_table.json")
    ap.add_argument("--variants", default="2:ce,2:fkl,2:rkl,2:jsd,2:tvd,2:tvd@0.5")
    ap.add_argument(
        "--sources", default="tinyshakespeare,wikitext2", help="training texts (train parts)"
    )
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=0.0)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--shortlist", type=int, default=8192)
    ap.add_argument("--prefix", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--select-blocks", type=int, default=2)
    ap.add_argument("--texts", default="tinyshakespeare,wikitext2")
    ap.add_argument("--alpha-blocks", type=int, default=4)
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--cost-repeats", type=int, default=3)
    ap.add_argument("--decode", default="all", help="drafts decoded on the first text")
    ap.add_argument("--decode-more", default="all", help="drafts decoded on the others")
    ap.add_argument(
        "--packed",
        action=argparse.BooleanOptionalAction,
        default=packing_available(),
        help="oneDNN pre-packed linear layers in every timed model (default where available)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target", type=float, default=1.3, help="speed-up the trend aims at")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t = load_causal_lm(TEACHER)
    teacher, tok = freeze(t.model), t.tokenizer
    if args.phase in ("train", "both"):
        info = train(args, teacher, tok)
    else:
        info = json.loads((Path(args.out) / "train.json").read_text())
    if args.phase == "train":
        return 0
    t0 = time.time()
    notes: dict = {}

    def save(rows: list[dict], partial: bool = True) -> None:
        result = {
            **notes,
            "command": "python scripts/draft_table.py " + " ".join(argv or sys.argv[1:]),
            "partial": partial,
            "teacher": TEACHER,
            "threads": args.threads,
            "train": info,
            "rows": rows,
            "table_seconds": time.time() - t0,
            "target_speedup": args.target,
            "trend": _trend_for(rows, info, args.target),
            "settings": {k: v for k, v in vars(args).items()},
        }
        write_json(Path(args.json), result, default=_json_default)

    rows = table(args, teacher, tok, info, save, notes)
    save(rows, partial=False)
    log.info("wrote %s", args.json)
    return 0


def _trend_for(rows: list[dict], info: dict, target: float) -> dict:
    """α (T = 1) the cost model needs for ``target`` on the first text, and the fit's tokens."""
    first = [r for r in rows if r.get("depth") == 2 and "t1" in r]
    if not first:
        return {}
    need = first[0]["t1"][f"alpha_for_{target:g}x"]
    return {"alpha_needed_t1": need, "fits": trend(info, need) if math.isfinite(need) else {}}


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)


if __name__ == "__main__":
    raise SystemExit(main())
