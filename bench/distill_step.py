"""Cost of one distillation step, variants side by side (BERT-like teacher and student, CPU).

Teacher: randomly initialised ``BertForSequenceClassification`` (12 layers, width 384, 12 heads,
FFN 1536, vocab 30522, 2 labels), eval mode, ``requires_grad`` off, forward under ``no_grad``.
Student: same shape with 4 layers, train mode, AdamW. Dropout is 0 in both models (so eager
attention probabilities are real distributions and every variant runs the same kernels).
One batch with real padding (lengths drawn in [seq/2, seq]) is shared by all variants. Every
variant's loss is ``mean(student_logits**2)`` (a trivial task loss, so the backward pass always
covers the whole student) plus its distillation terms:

- ``student``: the student step alone (forward, trivial loss, backward, AdamW step);
- ``floor``: + teacher forward (both models SDPA), no distillation term: the floor;
- ``logit_kd``: floor + Hinton KD (kd part, tau 2) on the 2-class classification logits;
- ``relations``: floor + MiniLMv2 Q-Q, K-K, V-V relation KL between the last layers through
  ``attnkd`` (q/k/v captured by ``Capture`` hooks, both models SDPA, 12 relation heads, masked);
- ``peer_eager``: how peer toolkits do it: both models eager with ``output_attentions=True``,
  KL of the returned last-layer probabilities (log of probabilities, masked explicitly) plus a
  value relation built by matmul + softmax from a hooked value projection (MiniLM v1 losses).

Variants run round-robin (the starting variant rotates each round) so that background load hits
all alike; the table gives median seconds, their ratio to the floor's median, and the paired
ratio: the median over rounds of (variant time / floor time in the same round), which cancels
slow drifts of the machine's speed. ``--memory`` runs two steps of
each variant in its own subprocess: peak RSS (VmHWM, reset after model, gradient and AdamW
state creation) minus the RSS at that point. ``--profile`` times the pieces of the relations path
and lists the top aten ops of the relation losses (naive and chunked).

    python bench/distill_step.py --rounds 5 --memory --profile --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertForSequenceClassification

from attnkd.atomic import write_json
from attnkd.capture import Capture, Tap
from attnkd.eval.memory import reset_peak as _reset_peak
from attnkd.eval.memory import status_kb as _status_kb
from attnkd.losses.attention import relation_kl
from attnkd.losses.logits import hinton_kd

VARIANTS = ("student", "floor", "logit_kd", "relations", "peer_eager")
RELATIONS = ("q", "k", "v")  # Q-Q, K-K, V-V


@dataclass(frozen=True)
class StepConfig:
    batch: int = 32
    seq: int = 128
    teacher_layers: int = 12
    student_layers: int = 4
    hidden: int = 384
    heads: int = 12
    ffn: int = 1536
    vocab: int = 30522
    relation_impl: str = "auto"
    threads: int = 0
    seed: int = 0


QUICK = dict(batch=4, seq=16, teacher_layers=2, student_layers=1, hidden=96, ffn=192, vocab=500)


@dataclass
class Models:
    """Models, optimizers and the shared batch; eager copies only when ``peer_eager`` runs."""

    teacher: nn.Module
    student: nn.Module
    opt: torch.optim.Optimizer
    batch: dict[str, Tensor]
    mask: Tensor
    teacher_eager: nn.Module | None = None
    student_eager: nn.Module | None = None
    opt_eager: torch.optim.Optimizer | None = None


def _bert(cfg: StepConfig, layers: int, attn: str) -> nn.Module:
    config = BertConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=attn,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW with its state and the gradients allocated up front (zero step), so memory
    probes measure the step's activations and loss workspace, not one-time state."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=False)
    return opt


def _batch(cfg: StepConfig) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    lengths = torch.randint(cfg.seq // 2, cfg.seq + 1, (cfg.batch,), generator=g)
    lengths[0] = cfg.seq  # at least one full row, so the padded width is seq
    mask = torch.arange(cfg.seq)[None, :] < lengths[:, None]
    ids = torch.randint(100, cfg.vocab, (cfg.batch, cfg.seq), generator=g) * mask
    return {
        "input_ids": ids,
        "attention_mask": mask.long(),
        "token_type_ids": torch.zeros_like(ids),
    }


def build(cfg: StepConfig, eager: bool = True) -> Models:
    """Build teacher, student (and eager copies with the same weights when ``eager``)."""
    torch.manual_seed(cfg.seed)
    teacher = _freeze(_bert(cfg, cfg.teacher_layers, "sdpa"))
    student = _bert(cfg, cfg.student_layers, "sdpa").train()
    batch = _batch(cfg)
    m = Models(teacher, student, _optimizer(student), batch, batch["attention_mask"].bool())
    if eager:
        m.teacher_eager = _bert(cfg, cfg.teacher_layers, "eager")
        m.teacher_eager.load_state_dict(teacher.state_dict())
        _freeze(m.teacher_eager)
        m.student_eager = _bert(cfg, cfg.student_layers, "eager").train()
        m.student_eager.load_state_dict(student.state_dict())
        m.opt_eager = _optimizer(m.student_eager)
    return m


def _task_loss(logits: Tensor) -> Tensor:
    return logits.square().mean()


def _finish(loss: Tensor, opt: torch.optim.Optimizer) -> float:
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    return float(loss.detach())


# ------------------------------------------------------------------------------ peer path


def _peer_prob_kl(p_t: Tensor, p_s: Tensor, mask: Tensor) -> Tensor:
    """KL(P_T || P_S) from probabilities (B, H, S, S): log of the probabilities with padded
    keys set to 1 first (log 0 would give NaN gradients), mean over heads and real rows."""
    keys = mask[:, None, None, :]
    lt, ls = torch.where(keys, p_t, 1.0).log(), torch.where(keys, p_s, 1.0).log()
    per_row = (p_t * (lt - ls)).sum(-1)  # (B, H, S)
    rows = mask[:, None, :].to(per_row.dtype)
    return (per_row * rows).sum() / (rows.sum() * p_t.shape[1]).clamp_min(1)


def _peer_value_probs(v: Tensor, heads: int, mask: Tensor) -> Tensor:
    """softmax(V V^T / sqrt(d)) per head with an additive padding mask: (B, S, W) -> (B,H,S,S)."""
    b, s, w = v.shape
    vh = v.view(b, s, heads, w // heads).transpose(1, 2)
    scores = vh @ vh.transpose(-1, -2) / math.sqrt(w // heads)
    bias = (~mask)[:, None, None, :].to(scores.dtype) * torch.finfo(scores.dtype).min
    return (scores + bias).softmax(-1)


def _value_hook(model: nn.Module, store: dict[str, Tensor], key: str):
    value = model.bert.encoder.layer[-1].attention.self.value
    return value.register_forward_hook(lambda _m, _i, out: store.__setitem__(key, out))


# ------------------------------------------------------------------------------ the steps


def make_steps(m: Models, cfg: StepConfig, variants=VARIANTS) -> dict[str, Callable[[], float]]:
    """One callable per variant; each runs a full training step and returns its loss."""
    teacher, student, opt, batch, mask = m.teacher, m.student, m.opt, m.batch, m.mask
    t_last, s_last = cfg.teacher_layers - 1, cfg.student_layers - 1
    t_cap = Capture(teacher, [Tap(k, t_last) for k in RELATIONS])
    s_cap = Capture(student, [Tap(k, s_last) for k in RELATIONS])

    def student_step() -> float:
        return _finish(_task_loss(student(**batch).logits), opt)

    def floor() -> float:
        with torch.no_grad():
            teacher(**batch)
        return _finish(_task_loss(student(**batch).logits), opt)

    def logit_kd() -> float:
        with torch.no_grad():
            t_logits = teacher(**batch).logits
        s_logits = student(**batch).logits
        kd = hinton_kd(s_logits, t_logits, temperature=2.0).kd
        return _finish(_task_loss(s_logits) + kd, opt)

    def relations() -> float:
        with torch.no_grad(), t_cap:
            teacher(**batch)
        with s_cap:
            s_logits = student(**batch).logits
        t, s = t_cap.taps, s_cap.taps
        loss = _task_loss(s_logits)
        for kind in RELATIONS:
            tx, sx = t.get(kind, t_last), s.get(kind, s_last)
            loss = loss + relation_kl(tx, tx, sx, sx, cfg.heads, mask=mask, impl=cfg.relation_impl)
        t.clear()
        s.clear()
        return _finish(loss, opt)

    def peer_eager() -> float:
        store: dict[str, Tensor] = {}
        handles = [
            _value_hook(m.teacher_eager, store, "t"),
            _value_hook(m.student_eager, store, "s"),
        ]
        try:
            with torch.no_grad():
                t_att = m.teacher_eager(**batch, output_attentions=True).attentions[-1]
            out = m.student_eager(**batch, output_attentions=True)
        finally:
            for h in handles:
                h.remove()
        loss = _task_loss(out.logits) + _peer_prob_kl(t_att, out.attentions[-1], mask)
        vr_t = _peer_value_probs(store["t"], cfg.heads, mask)
        vr_s = _peer_value_probs(store["s"], cfg.heads, mask)
        return _finish(loss + _peer_prob_kl(vr_t, vr_s, mask), m.opt_eager)

    table = {
        "student": student_step,
        "floor": floor,
        "logit_kd": logit_kd,
        "relations": relations,
        "peer_eager": peer_eager,
    }
    return {v: table[v] for v in variants}


def interleaved(steps: dict[str, Callable[[], object]], rounds: int, warmup: int):
    """Round-robin timing (start rotates per round); seconds per call, warm-up rounds dropped."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            t0 = time.perf_counter()
            steps[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------ memory probe


def memory_probe(cfg: StepConfig, variant: str, steps: int = 2) -> float:
    """Peak extra resident MB of ``steps`` steps of one variant (meant for a fresh process)."""
    m = build(cfg, eager=variant == "peer_eager")
    step = make_steps(m, cfg, (variant,))[variant]
    base_kb = _reset_peak()
    for _ in range(steps):
        step()
    return (_status_kb("VmHWM") - base_kb) / 1024


def _spawn_probe(cfg: StepConfig, variant: str) -> float | None:
    cmd = [sys.executable, __file__, "--memory-worker", variant, json.dumps(asdict(cfg))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"memory probe {variant} failed: {last}", file=sys.stderr)
        return None
    return float(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ profile


def _top_ops(fn: Callable[[], object], n: int = 8) -> list[dict]:
    """The ``n`` aten ops with the most self CPU time in one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count}
        for e in events[:n]
    ]


def profile(m: Models, cfg: StepConfig, rounds: int, warmup: int) -> dict[str, dict]:
    """The relations path's pieces: ``median_s`` of each, interleaved like the main run, and
    ``top_ops`` of the relation losses alone (Q-Q, K-K, V-V forward + backward, 1 call)."""
    batch, mask, t_last, s_last = m.batch, m.mask, cfg.teacher_layers - 1, cfg.student_layers - 1
    t_cap = Capture(m.teacher, [Tap(k, t_last) for k in RELATIONS])
    s_cap = Capture(m.student, [Tap(k, s_last) for k in RELATIONS])
    with torch.no_grad(), t_cap:
        m.teacher(**batch)
    with torch.no_grad(), s_cap:
        m.student(**batch)
    tx = {k: t_cap.taps.get(k, t_last) for k in RELATIONS}
    sx = {k: s_cap.taps.get(k, s_last).clone().requires_grad_(True) for k in RELATIONS}

    def teacher_fwd(cap: Capture | None):
        with torch.no_grad():
            if cap is None:
                return m.teacher(**batch)
            with cap:
                m.teacher(**batch)
            cap.taps.clear()

    def student_fwd_bwd(cap: Capture | None):
        m.student.zero_grad(set_to_none=False)
        if cap is None:
            return _task_loss(m.student(**batch).logits).backward()
        with cap:
            loss = _task_loss(m.student(**batch).logits)
        cap.taps.clear()
        loss.backward()

    def loss_only(impl: str):
        for k in RELATIONS:
            sx[k].grad = None
        total = sum(relation_kl(tx[k], tx[k], sx[k], sx[k], cfg.heads, mask, impl=impl)
                    for k in RELATIONS)  # fmt: skip
        total.backward()

    def full(impl: str):
        return make_steps(m, StepConfig(**{**asdict(cfg), "relation_impl": impl}), ("relations",))

    pieces = {
        "teacher_fwd": lambda: teacher_fwd(None),
        "teacher_fwd_hooks": lambda: teacher_fwd(t_cap),
        "student_fwd_bwd": lambda: student_fwd_bwd(None),
        "student_fwd_bwd_hooks": lambda: student_fwd_bwd(s_cap),
        "relation_loss_naive": lambda: loss_only("naive"),
        "relation_loss_chunked": lambda: loss_only("chunked"),
        "floor_step": make_steps(m, cfg, ("floor",))["floor"],
        "relations_step_naive": full("naive")["relations"],
        "relations_step_chunked": full("chunked")["relations"],
    }
    times = interleaved(pieces, rounds, warmup)
    return {
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "top_ops": {impl: _top_ops(lambda i=impl: loss_only(i)) for impl in ("naive", "chunked")},
    }


# ------------------------------------------------------------------------------ main


def paired_ratios(times: dict[str, list[float]], base: str = "floor") -> dict[str, float]:
    """Median over rounds of each variant's time over the ``base`` time of the same round."""
    return {v: statistics.median(t / b for t, b in zip(ts, times[base])) for v, ts in times.items()}


def _table(
    medians: dict[str, float], floor: float, paired: dict[str, float], peak: dict[str, float | None]
) -> str:
    rows = [("variant", "median s", "x floor", "paired x", "peak MB")]
    for name, sec in medians.items():
        mb = peak.get(name)
        rows.append(
            (name, f"{sec:.3f}", f"{sec / floor:.3f}", f"{paired[name]:.3f}",
             "-" if mb is None else f"{mb:.0f}")
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--teacher-layers", type=int)
    ap.add_argument("--student-layers", type=int)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--relation-impl", choices=("auto", "naive", "chunked"), default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    ap.add_argument("--memory", action="store_true", help="peak RSS per variant (subprocesses)")
    ap.add_argument("--profile", action="store_true", help="time the relations path's pieces")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--memory-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        variant, cfg_json = args.memory_worker
        cfg = StepConfig(**json.loads(cfg_json))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        print(memory_probe(cfg, variant))
        return 0

    sizes = dict(QUICK) if args.quick else {}
    for key in ("batch", "seq", "teacher_layers", "student_layers"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    cfg = StepConfig(**sizes, relation_impl=args.relation_impl, threads=args.threads)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    load_before = os.getloadavg()
    models = build(cfg)
    times = interleaved(make_steps(models, cfg), args.rounds, args.warmup)
    medians = {v: statistics.median(times[v]) for v in VARIANTS}
    floor = medians["floor"]
    prof = profile(models, cfg, args.rounds, args.warmup) if args.profile else None
    peak = {v: _spawn_probe(cfg, v) for v in VARIANTS} if args.memory else {}
    paired = paired_ratios(times)
    result = {f"{v}_s": medians[v] for v in VARIANTS}
    result |= {
        "ratios": {v: medians[v] / floor for v in VARIANTS},
        "paired_ratios": paired,
        "peak_mb": peak,
        "config": {
            **asdict(cfg),
            "threads_used": torch.get_num_threads(),
            "rounds": args.rounds,
            "warmup": args.warmup,
            "torch": torch.__version__,
            "dropout": 0.0,
        },  # fmt: skip
        "times_s": times,
        "loadavg": {"before": load_before, "after": os.getloadavg()},
    }
    if prof is not None:
        result["profile"] = prof
    print(_table(medians, floor, paired, peak))
    if prof is not None:
        print("\nrelations path, median s per piece:")
        print("\n".join(f"  {k:24s} {v:.4f}" for k, v in prof["median_s"].items()))
        for impl, ops in prof["top_ops"].items():
            print(f"relation losses alone ({impl}), top ops by self CPU ms:")
            print("\n".join(f"  {o['op']:28s} {o['self_ms']:9.1f}  x{o['calls']}" for o in ops))
    print(f"\nloadavg before {load_before[0]:.1f}, after {result['loadavg']['after'][0]:.1f}")
    if args.json:
        write_json(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
