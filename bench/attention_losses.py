"""Naive vs chunked attention / relation losses: peak extra memory and time, forward + backward.

Setting of the issue: batch 1, 12 heads, head dim 32, float32, teacher frozen, student q/k
requiring grad. Each case runs in its own subprocess; its peak memory is the peak resident set
(VmHWM, reset through /proc/self/clear_refs after imports and input creation) minus the
resident set at that point. Time is the median of ``--repeats`` forward + backward passes
(after one warm-up up to seq 4096). A naive case whose predicted memory exceeds the available
RAM is skipped; a subprocess killed by the kernel (OOM) is reported as OOM. The measured
processes run with OMP_WAIT_POLICY=PASSIVE by default (see ``--omp-wait-policy``).

    python bench/attention_losses.py --sizes 512,1024,2048 --repeats 3 --json out.json

``--position-bias``: the attention losses (not the relation ones) also add MPNet's
relative-position bias to both models' scores (a 32 x 12 table each, the student's trained),
so the chunked form gathers each block's bias slab from 2*seq - 1 values per head.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from attnkd.atomic import write_json
from attnkd.eval.memory import available_bytes as _available_bytes
from attnkd.eval.memory import reset_peak as _reset_peak
from attnkd.eval.memory import status_kb as _status_kb

LOSSES = (
    "attention_kl",
    "relation_kl",
    "attention_ce",
    "value_relation_kl",
    "attention_score_mse",
    "attention_output_mse",
)
DEFAULT_SIZES = (512, 1024, 2048, 4096, 8192, 16384)
NAIVE_BYTES_PER_SCORE = 28.0
"""Predicted naive peak per (head, query, key) score, float32 (measured ~26 for attention_kl),
used until a smaller naive case of the same run gives a measured figure."""
HEADS, HEAD_DIM = 12, 32
BIASED = ("attention_kl", "attention_ce", "attention_score_mse", "attention_output_mse")


def _inputs(loss: str, seq: int, position_bias: bool = False):
    """(callable(impl) -> loss tensor, student leaves) for one case."""
    import torch

    from attnkd.losses import attention as att

    g = torch.Generator().manual_seed(0)

    def t(*shape, grad=False):
        return torch.randn(*shape, generator=g).requires_grad_(grad)

    shape = (1, HEADS, seq, HEAD_DIM)
    tq, tk, tv = t(*shape), t(*shape), t(*shape)
    sq, sk, sv = t(*shape, grad=True), t(*shape, grad=True), t(*shape, grad=True)
    if loss == "relation_kl":  # Q-Q relation, 12 relation heads over width 384
        tx, sx = t(1, seq, HEADS * HEAD_DIM), t(1, seq, HEADS * HEAD_DIM, grad=True)
        return (lambda impl: att.relation_kl(tx, tx, sx, sx, HEADS, impl=impl)), [sx]
    if loss == "value_relation_kl":
        return (lambda impl: att.value_relation_kl(tv, sv, impl=impl)), [sv]
    kw, extra = {}, []
    if position_bias and loss in BIASED:
        from attnkd.losses.position_bias import RelativePositionBias
        from attnkd.models.adapters import mpnet_position_bucket

        table = t(32, HEADS, grad=True)
        kw["teacher_bias"] = RelativePositionBias(t(32, HEADS), mpnet_position_bucket)
        kw["student_bias"] = RelativePositionBias(table, mpnet_position_bucket)
        extra = [table]
    if loss == "attention_output_mse":
        fn = att.attention_output_mse
        return (lambda impl: fn(tq, tk, tv, sq, sk, sv, impl=impl, **kw)), [sq, sk, sv, *extra]
    fn = getattr(att, loss)
    return (lambda impl: fn(tq, tk, sq, sk, impl=impl, **kw)), [sq, sk, *extra]


def run_case(loss: str, impl: str, seq: int, repeats: int, position_bias: bool = False) -> dict:
    """Measure one case in this process (meant for a fresh subprocess)."""
    import torch

    compute, leaves = _inputs(loss, seq, position_bias)
    base_kb = _reset_peak()

    def step():
        for x in leaves:
            x.grad = None
        value = compute(impl)
        value.backward()
        return value

    times = []
    value = None
    for i in range(repeats + (1 if seq <= 4096 else 0)):
        t0 = time.perf_counter()
        value = step()
        if i or seq > 4096:
            times.append(time.perf_counter() - t0)
    peak_kb = _status_kb("VmHWM") - base_kb
    probe, norm = 0.0, 0.0
    for x in leaves:  # a fixed signed projection of the gradient, and its norm
        w = torch.linspace(-1, 1, x.grad.numel(), dtype=torch.float64)
        probe += float(x.grad.reshape(-1).double() @ w)
        norm += float(x.grad.double().square().sum())
    return {
        "loss": loss,
        "impl": impl,
        "seq": seq,
        "position_bias": position_bias and loss in BIASED,
        "threads": torch.get_num_threads(),
        "peak_extra_mb": peak_kb / 1024,
        "median_ms": 1e3 * statistics.median(times),
        "times_ms": [1e3 * x for x in times],
        "value": float(value.detach()),
        "grad_probe": probe,
        "grad_norm": norm**0.5,
    }


def _spawn(loss: str, impl: str, seq: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", loss, impl, str(seq), str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.position_bias:
        cmd += ["--position-bias"]
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode < 0 or proc.returncode == 137:
        return {"loss": loss, "impl": impl, "seq": seq, "status": "OOM (killed)"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        status = "OOM" if "memory" in last.lower() else f"error: {last}"
        return {"loss": loss, "impl": impl, "seq": seq, "status": status}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(
        status="ok",
        load_before=load,
        load_after=os.getloadavg()[0],
        omp_wait_policy=env.get("OMP_WAIT_POLICY"),
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--losses", default="attention_kl,relation_kl", help=f"some of {LOSSES}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY of the measured processes ('' keeps the environment's). PASSIVE: "
        "idle OpenMP workers sleep instead of spinning; on a shared machine spinning workers "
        "take the CPU from the main thread and the time measures the scheduler, not the work",
    )
    ap.add_argument("--json", default=None, help="write all measurements here")
    ap.add_argument(
        "--position-bias", action="store_true", help="attention losses add MPNet's position bias"
    )
    ap.add_argument(
        "--worker", nargs=4, metavar=("LOSS", "IMPL", "SEQ", "REPEATS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        loss, impl, seq, repeats = args.worker
        print(json.dumps(run_case(loss, impl, int(seq), int(repeats), args.position_bias)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    losses = [x for x in args.losses.split(",") if x]
    unknown = [x for x in losses if x not in LOSSES]
    if unknown:
        ap.error(f"unknown losses {unknown}; choose from {LOSSES}")
    rows, records = [], []
    for loss in losses:
        per_score = NAIVE_BYTES_PER_SCORE
        for seq in sizes:
            scores = HEADS * seq * seq
            chunked = _spawn(loss, "chunked", seq, args)
            need = per_score * scores
            if need > 0.8 * _available_bytes():
                naive = {
                    "loss": loss,
                    "impl": "naive",
                    "seq": seq,
                    "status": f"skipped (needs ~{need / 1e9:.1f} GB)",
                    "predicted_extra_mb": need / 2**20,
                }
            else:
                naive = _spawn(loss, "naive", seq, args)
                if naive["status"] == "ok" and seq >= 1024:  # small cases: fixed costs dominate
                    per_score = naive["peak_extra_mb"] * 2**20 / scores
            records += [naive, chunked]
            rows.append(_row(loss, seq, naive, chunked))
            print("  ".join(rows[-1]), file=sys.stderr, flush=True)
    print()
    print(_table(rows))
    if args.json:
        meta = {"heads": HEADS, "head_dim": HEAD_DIM, "batch": 1, "dtype": "float32"}
        meta["position_bias"] = args.position_bias
        write_json(args.json, {**meta, "cases": records}, indent=1)
    return 0


HEADER = (
    "loss",
    "seq",
    "naive ms",
    "chunked ms",
    "speedup",
    "naive MB",
    "chunked MB",
    "mem ratio",
    "value diff",
    "grad diff",
)


def _row(loss: str, seq: int, naive: dict, chunked: dict) -> tuple[str, ...]:
    ok_n, ok_c = naive["status"] == "ok", chunked["status"] == "ok"
    speedup = ratio = value_diff = grad_diff = "-"
    if ok_n and ok_c:
        speedup = f"{naive['median_ms'] / chunked['median_ms']:.2f}x"
        ratio = f"{chunked['peak_extra_mb'] / max(naive['peak_extra_mb'], 1e-9):.4f}"
        value_diff = f"{_rel(chunked, naive, 'value'):.1e}"
        grad_diff = f"{_rel(chunked, naive, 'grad_probe'):.1e}"
    elif ok_c and "predicted_extra_mb" in naive:  # against the predicted naive peak
        ratio = f"~{chunked['peak_extra_mb'] / naive['predicted_extra_mb']:.4f}"
    return (
        loss,
        str(seq),
        f"{naive['median_ms']:.1f}" if ok_n else naive["status"],
        f"{chunked['median_ms']:.1f}" if ok_c else chunked["status"],
        speedup,
        f"{naive['peak_extra_mb']:.0f}" if ok_n else "-",
        f"{chunked['peak_extra_mb']:.0f}" if ok_c else "-",
        ratio,
        value_diff,
        grad_diff,
    )


def _rel(a: dict, b: dict, key: str) -> float:
    """Difference of one measured scalar between two cases, relative to the naive value (the
    loss) or to the naive gradient norm (the gradient probe, a signed sum that may cancel)."""
    scale = b["grad_norm"] if key == "grad_probe" else abs(b[key])
    return abs(a[key] - b[key]) / max(scale, 1e-30)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [HEADER, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
