"""Naive vs chunked vocabulary divergences: peak extra memory and time, forward + backward.

Each case runs in its own subprocess. Peak memory is the peak resident set (VmHWM in
/proc/self/status) minus the same figure taken after imports and input creation; time is the
median of repeated forward + backward passes after one warm-up. Naive cases whose predicted
memory exceeds the available RAM are skipped. A third column, ``reuse``, is the chunked form
with ``overwrite_teacher=True`` (the gradient takes the teacher logits' memory): each pass gets
fresh teacher logits copied into one input buffer before its clock starts, as a teacher
forward would produce them.

    python bench/vocab_losses.py --sizes 512,1024 --vocab 32000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from attnkd.atomic import write_json
from attnkd.eval.memory import available_bytes as _available_bytes
from attnkd.eval.memory import status_kb as _status_kb

KINDS = ("fkl", "rkl", "jsd", "tvd")
DEFAULT_SIZES = (512, 1024, 2048, 4096, 8192, 16384)
NAIVE_FACTOR = 10.0
"""Predicted naive extra memory in logits-sized float32 buffers (measured 5-8 on CPU)."""
CHUNKED_FACTOR = 1.5


def run_case(
    kind: str, impl: str, seq: int, vocab: int, repeats: int, chunk: int | None, hidden: int = 0
) -> dict:
    """Measure one case in this process (call in a fresh subprocess)."""
    import torch
    import torch.nn.functional as F

    from attnkd.losses.logits import token_divergence, token_divergence_from_hidden

    torch.manual_seed(0)
    if hidden:
        h_s = torch.randn(1, seq, hidden).requires_grad_(True)
        w_s = torch.randn(vocab, hidden).mul_(hidden**-0.5).requires_grad_(True)
        h_t = torch.randn(1, seq, hidden)
        w_t = torch.randn(vocab, hidden).mul_(hidden**-0.5)
        student = h_s
    else:
        student = torch.randn(1, seq, vocab).mul_(2).requires_grad_(True)
        teacher = torch.randn(1, seq, vocab).mul_(2)
        work = teacher.clone() if impl == "reuse" else None  # resident before the baseline
    base_kb = _status_kb("VmHWM")

    def step():
        student.grad = None
        if not hidden and impl == "reuse":
            loss = token_divergence(
                student, work, kind=kind, impl="chunked", chunk_size=chunk, overwrite_teacher=True
            )
        elif not hidden:
            loss = token_divergence(student, teacher, kind=kind, impl=impl, chunk_size=chunk)
        elif impl == "naive":
            w_s.grad = None
            zs, zt = F.linear(h_s, w_s), F.linear(h_t, w_t)
            loss = token_divergence(zs, zt, kind=kind, impl="naive")
        else:
            w_s.grad = None
            loss = token_divergence_from_hidden(h_s, w_s, h_t, w_t, kind=kind, chunk_size=chunk)
        loss.backward()
        return loss

    def fresh_teacher():
        if not hidden and impl == "reuse":
            work.copy_(teacher)

    fresh_teacher()
    loss = step()
    times = []
    for _ in range(repeats):
        fresh_teacher()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak_kb = _status_kb("VmHWM") - base_kb
    grad = student.grad.double()
    return {
        "kind": kind,
        "impl": impl,
        "seq": seq,
        "vocab": vocab,
        "peak_extra_mb": peak_kb / 1024,
        "median_ms": 1e3 * statistics.median(times),
        "value": loss.item(),
        "grad_norm": float(grad.norm()),
        "grad_probe": float((grad[0, :, :8] * torch.linspace(-1, 1, 8, dtype=grad.dtype)).sum()),
    }


def _spawn(kind: str, impl: str, seq: int, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--case", kind, impl, str(seq)]
    cmd += ["--vocab", str(args.vocab), "--repeats", str(args.repeats)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    if args.from_hidden:
        cmd += ["--from-hidden", str(args.from_hidden)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"case {kind}/{impl}/{seq} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--from-hidden", type=int, default=0, metavar="D", help="hidden width")
    ap.add_argument("--json", default=None, help="write all results to this path")
    ap.add_argument("--case", nargs=3, metavar=("KIND", "IMPL", "SEQ"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        kind, impl, seq = args.case
        res = run_case(
            kind, impl, int(seq), args.vocab, args.repeats, args.chunk_size, args.from_hidden
        )
        print(json.dumps(res))
        return 0

    rows = []
    header = (
        f"{'kind':4} {'seq':>6} {'naive MB':>9} {'chunk MB':>9} {'mem x':>6} "
        f"{'naive ms':>9} {'chunk ms':>9} {'time x':>6} {'val rel':>8} {'grad rel':>8}"
    )
    if not args.from_hidden:
        header += f" {'reuse MB':>9} {'mem x':>6} {'reuse ms':>9} {'time x':>6} {'grad rel':>8}"
    print(header)
    for kind in args.kinds.split(","):
        for seq in (int(s) for s in args.sizes.split(",")):
            logits_bytes = 4 * seq * args.vocab
            avail = _available_bytes()
            naive = None
            if (2 + NAIVE_FACTOR) * logits_bytes < 0.85 * avail:
                naive = _spawn(kind, "naive", seq, args)
            chunked = reuse = None
            if (2 + CHUNKED_FACTOR) * logits_bytes < 0.85 * avail:
                chunked = _spawn(kind, "chunked", seq, args)
            if not args.from_hidden and (3 + 0.5) * logits_bytes < 0.85 * avail:
                reuse = _spawn(kind, "reuse", seq, args)
            row = {"kind": kind, "seq": seq, "naive": naive, "chunked": chunked}
            if not args.from_hidden:
                row["reuse"] = reuse
            rows.append(row)
            line = _format_row(kind, seq, naive, chunked)
            if not args.from_hidden:
                line += " " + _format_reuse(naive, reuse)
            print(line, flush=True)
    if args.json:
        meta = {"vocab": args.vocab, "batch": 1, "dtype": "float32"}
        meta["from_hidden"] = args.from_hidden
        write_json(args.json, {**meta, "rows": rows}, indent=1)
    return 0


def _format_row(kind: str, seq: int, naive: dict | None, chunked: dict | None) -> str:
    def f(d, key, fmt):
        return format(d[key], fmt) if d else "skip"

    out = f"{kind:4} {seq:6d} {f(naive, 'peak_extra_mb', '9.0f'):>9} "
    out += f"{f(chunked, 'peak_extra_mb', '9.0f'):>9} "
    if naive and chunked:
        out += f"{chunked['peak_extra_mb'] / naive['peak_extra_mb']:6.3f} "
    else:
        out += f"{'-':>6} "
    out += f"{f(naive, 'median_ms', '9.1f'):>9} {f(chunked, 'median_ms', '9.1f'):>9} "
    if naive and chunked:
        out += f"{chunked['median_ms'] / naive['median_ms']:6.3f} "
        out += f"{_rel(naive['value'], chunked['value']):8.1e} "
        out += f"{_rel(naive['grad_norm'], chunked['grad_norm']):8.1e}"
    else:
        out += f"{'-':>6} {'-':>8} {'-':>8}"
    return out


def _format_reuse(naive: dict | None, reuse: dict | None) -> str:
    if reuse is None:
        return f"{'skip':>9} {'-':>6} {'skip':>9} {'-':>6} {'-':>8}"
    out = f"{reuse['peak_extra_mb']:9.0f} "
    out += f"{reuse['peak_extra_mb'] / naive['peak_extra_mb']:6.3f} " if naive else f"{'-':>6} "
    out += f"{reuse['median_ms']:9.1f} "
    if naive:
        out += f"{reuse['median_ms'] / naive['median_ms']:6.3f} "
        out += f"{_rel(naive['grad_norm'], reuse['grad_norm']):8.1e}"
    else:
        out += f"{'-':>6} {'-':>8}"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
