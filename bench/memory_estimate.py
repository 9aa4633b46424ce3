"""Predicted vs measured peak memory of a training step, per recipe (CPU, resident memory).

For each recipe, in its own subprocess: :func:`attnkd.estimate.estimate_memory` predicts the
peak from the configs (no weights read); then the real teacher and student are loaded and built
exactly as ``attnkd distill`` does (``_make_student``, the loss terms with their projectors,
``train.freeze_embeddings``), and ``--steps`` real training steps run: the recipe's step
function (teacher forward under no_grad, student forward, weighted loss terms), backward,
gradient clipping and the AdamW step of :func:`attnkd.engine.optim.build_optimizer`. Batches
are ``train.batch_size`` x ``data.max_length`` random token ids with a full attention mask (the
worst case the estimate describes; real sentence batches are padded only to their longest).

Measured = peak resident memory during the steps (VmHWM) minus the resident memory before any
model was loaded (the Python/PyTorch runtime after a tiny warm-up step, which the estimate leaves
out). Each recipe runs twice: with glibc's default allocator (what a user's process shows; freed
memory is mostly kept, so resident memory only grows) and with ``MALLOC_MMAP_THRESHOLD_=65536``
(large blocks returned at once: resident memory follows the live tensors, which is what the
estimate counts). The table prints predicted / measured for both.

    nice -n 10 python bench/memory_estimate.py --json results/memory_estimate.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("recipes/minilm-sentence.yaml", "recipes/smollm2-lm.yaml", "recipes/smollm2-cut.yaml")
MiB = 1 << 20
ALLOCATORS = {"glibc": {}, "live": {"MALLOC_MMAP_THRESHOLD_": "65536"}}
"""'glibc': the default allocator, which keeps much freed memory in the process (what a user
sees); 'live': blocks over 64 KiB are mapped and unmapped one by one, so resident memory follows
the tensors actually alive (what the estimate models)."""


def _warm_up(torch) -> None:
    """One tiny forward/backward/AdamW step, so one-off kernel and thread-pool set-up (not
    part of what the estimate models) happens before the baseline is read."""
    layer = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(layer.parameters())
    x = torch.randn(8, 16, 64, requires_grad=True)
    torch.nn.functional.scaled_dot_product_attention(x, x, x).sum().backward()
    layer(x).square().mean().backward()
    opt.step()


def _measure(recipe: str, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from attnkd.config.io import load_config
    from attnkd.distill import Distiller, _make_student, make_step
    from attnkd.engine.optim import build_optimizer
    from attnkd.estimate import estimate_memory
    from attnkd.eval.memory import reset_peak, status_kb
    from attnkd.losses.terms import build_terms
    from attnkd.models.adapters import geometry
    from attnkd.models.load import freeze, freeze_input_embeddings
    from attnkd.tasks import get_task

    cfg = load_config(ROOT / recipe)
    est = estimate_memory(cfg)  # also imports the model families' code
    _warm_up(torch)
    base_kb = status_kb("VmRSS")  # runtime, libraries and kernels, before any model exists

    task = get_task(cfg.task)
    torch.manual_seed(cfg.train.seed)
    loaded = task.load(cfg.teacher.name, cfg.teacher.attn_implementation, tokenizer=False)
    teacher = freeze(loaded.model)
    student = _make_student(cfg, teacher, task)
    terms = build_terms(cfg.losses, loaded.geometry, geometry(student.config))
    distiller = Distiller(student, terms)
    if cfg.train.freeze_embeddings:
        freeze_input_embeddings(student)
    step = make_step(teacher, distiller)
    optimizer = build_optimizer(distiller, cfg.train)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    loaded_kb = status_kb("VmRSS")

    vocab = int(student.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    shape = (cfg.train.batch_size, cfg.data.max_length)
    reset_peak()
    seconds = []
    distiller.train()
    for _ in range(steps):
        t0 = time.perf_counter()
        ids = torch.randint(5, vocab, shape, generator=gen)
        out = step({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
    peak_kb = status_kb("VmHWM")
    measured = (peak_kb - base_kb) * 1024
    return {
        "recipe": recipe,
        "tokens_per_step": est.tokens,
        "steps": steps,
        "predicted_bytes": est.peak,
        "predicted_at": est.peak_at,
        "predicted_parts": est.parts,
        "measured_bytes": measured,
        "loaded_bytes": (loaded_kb - base_kb) * 1024,
        "predicted_resident_bytes": est.parts["teacher weights"] + est.parts["student weights"],
        "runtime_bytes": base_kb * 1024,
        "ratio": est.peak / measured,
        "step_seconds": seconds,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(_measure(args.one, args.steps, args.threads)))
        return 0
    rows = []
    for recipe, (allocator, extra_env) in itertools.product(args.recipes, ALLOCATORS.items()):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **extra_env}
        cmd = [sys.executable, __file__, "--one", recipe, "--steps", str(args.steps),
               "--threads", str(args.threads)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{recipe}: measurement failed (exit {proc.returncode})")
        row = {**json.loads(line[len("RESULT ") :]), "allocator": allocator}
        rows.append(row)
        print(
            f"{recipe:36s} {allocator:5s} predicted {row['predicted_bytes'] / MiB:6.0f} MiB  "
            f"measured {row['measured_bytes'] / MiB:6.0f} MiB  ratio {row['ratio']:.2f}",
            flush=True,
        )
    if args.json:
        out = {
            "command": "nice -n 10 python " + " ".join(["bench/memory_estimate.py", *sys.argv[1:]]),
            "note": "CPU, resident memory above the runtime's; taken under load (shared machine)",
            "torch_threads": args.threads,
            "rows": rows,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
