"""Offline teacher cache vs the live teacher: bytes per token and epoch time, side by side.

The recipe's teacher (default SmolLM2-135M-Instruct) and its student (the recipe's layer cut)
train on the first ``--blocks`` training blocks of the recipe's text with the recipe's
``logits`` term, through attnkd's own step (:func:`attnkd.distill.make_step`), twice per round:

- ``teacher``: every step runs the teacher forward, then the student (full-vocabulary loss);
- ``cache``: every step reads the top-k targets of its blocks from a cache written once
  before (``--top-k``, ``--dtype``), then the student (top-k + tail-bucket loss).

Both variants start from the same student weights and see the same batches; the order
alternates each round and the table gives the median epoch seconds and their ratio. The
one-off teacher pass that writes the cache is timed too (it costs about one teacher epoch).
``--full-check-steps S`` also trains S steps on a few short blocks from a k = V float32 cache
and from the live teacher and reports the largest relative difference of the two loss curves.

    python bench/teacher_cache.py --blocks 24 --top-k 64 --json results/teacher_cache.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from attnkd.atomic import write_json
from attnkd.config.io import apply_overrides, load_config
from attnkd.data.cache_match import run_key
from attnkd.data.lm import LMBatches
from attnkd.data.teacher_cache import CachedLMBatches, TeacherCache, write_cache
from attnkd.distill import Distiller, make_step
from attnkd.losses.terms import build_terms
from attnkd.models.adapters import geometry
from attnkd.models.load import freeze, load_causal_lm
from attnkd.recipes import find_recipe
from attnkd.students.build import build_student, select_layers
from attnkd.tasks.causal_lm import lm_splits


def _models(cfg):
    loaded = load_causal_lm(cfg.teacher.name)
    teacher = freeze(loaded.model)
    layers = select_layers(teacher.config.num_hidden_layers, cfg.student.layers, "")
    student, _ = build_student(teacher, layers)
    return teacher, loaded.tokenizer, student


def _epoch(teacher, student0, cfg, batches, steps: int | None = None) -> tuple[float, list[float]]:
    """One pass over ``batches`` (or ``steps`` of it): seconds and the loss of each step."""
    student = copy.deepcopy(student0).train()
    distiller = Distiller(student, build_terms(cfg.losses, geometry(teacher.config),
                                               geometry(student.config)))  # fmt: skip
    opt = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-4)
    step = make_step(teacher, distiller)
    n = batches.num_batches if steps is None else steps
    losses = []
    t0 = time.perf_counter()
    for i in range(n):
        out = step(batches.batch_at(0, i))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    return time.perf_counter() - t0, losses


def _cfg_with(cfg, k: int | None, cache: str):
    """The recipe with one forward-KL ``logits`` term (top-k ``k``) and ``teacher.cache``."""
    out = apply_overrides(cfg, [f"losses=[{{name: logits, kind: fkl, top_k: {k or 'null'}}}]"])
    return replace(out, teacher=replace(out.teacher, cache=cache))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="smollm2-lm")
    p.add_argument("--blocks", type=int, default=24, help="training blocks in the epoch")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--full-check-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recipe = Path(args.recipe) if Path(args.recipe).exists() else find_recipe(args.recipe)
    cfg = load_config(recipe, [f"data.max_length={args.block_size}", "train.seed=0"])
    teacher, tok, student0 = _models(cfg)
    blocks = lm_splits(cfg, tok).train[: args.blocks]
    work = Path(tempfile.mkdtemp(prefix="attnkd-bench-cache-"))
    key = run_key(cfg, teacher, tok, blocks, args.top_k, 1.0)
    t0 = time.perf_counter()
    info = write_cache(teacher, blocks, work / "topk", key, dtype=args.dtype, batch_size=args.batch)
    write_s = time.perf_counter() - t0
    cache = TeacherCache(work / "topk")

    live_cfg = _cfg_with(cfg, None, "")
    cache_cfg = _cfg_with(cfg, args.top_k, str(work / "topk"))
    live_batches = LMBatches(blocks, args.batch, 0)
    cached_batches = CachedLMBatches(blocks, args.batch, 0, cache)
    times = {"teacher": [], "cache": []}
    curves = {}
    for r in range(args.rounds):
        order = ("teacher", "cache") if r % 2 == 0 else ("cache", "teacher")
        for name in order:
            c, b = (live_cfg, live_batches) if name == "teacher" else (cache_cfg, cached_batches)
            s, losses = _epoch(teacher, student0, c, b)
            times[name].append(s)
            curves[name] = losses
            print(f"round {r} {name:8s} epoch {s:7.2f}s  losses {[round(x, 3) for x in losses]}")
    med = {k: statistics.median(v) for k, v in times.items()}

    full = None
    if args.full_check_steps > 0:
        short = blocks[: 2 * args.full_check_steps, :64].contiguous()
        vocab = int(teacher.config.vocab_size)
        fkey = run_key(cfg, teacher, tok, short, vocab, 1.0)
        finfo = write_cache(teacher, short, work / "full", fkey, dtype="fp32", batch_size=2)
        fcache = TeacherCache(work / "full")
        live_short = LMBatches(short, 2, 0)
        _, a = _epoch(teacher, student0, live_cfg, live_short, args.full_check_steps)
        fcfg = _cfg_with(cfg, vocab, str(work / "full"))
        _, b = _epoch(teacher, student0, fcfg, CachedLMBatches(short, 2, 0, fcache),
                      args.full_check_steps)  # fmt: skip
        rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b, strict=True))
        full = {"steps": args.full_check_steps, "tokens": short.numel(), "k": vocab,
                "teacher_losses": a, "cache_losses": b, "max_rel_diff": rel,
                "bytes_per_token": finfo["bytes_per_token"]}  # fmt: skip
        print(f"k = V ({vocab}) check: live {a} vs cache {b}: max relative diff {rel:.2e}")

    out = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "under_load": True,
        "teacher": cfg.teacher.name,
        "student_layers": cfg.student.layers,
        "threads": args.threads,
        "blocks": args.blocks,
        "block_size": args.block_size,
        "tokens_per_epoch": int(blocks.numel()),
        "batch": args.batch,
        "top_k": args.top_k,
        "logp_dtype": args.dtype,
        "bytes_per_token": info["bytes_per_token"],
        "target_bytes_per_token": info["target_bytes_per_token"],
        "full_logits_fp32_bytes_per_token": 4 * int(teacher.config.vocab_size),
        "cache_write_seconds": write_s,
        "epoch_seconds": times,
        "median_epoch_seconds": med,
        "teacher_over_cache": med["teacher"] / med["cache"],
        "loss_curves": curves,
        "full_k_check": full,
    }
    print(f"bytes/token {info['bytes_per_token']:.1f} (targets {info['target_bytes_per_token']:.1f}"
          f"; full fp32 logits {out['full_logits_fp32_bytes_per_token']}); epoch teacher "
          f"{med['teacher']:.1f}s vs cache {med['cache']:.1f}s: x{out['teacher_over_cache']:.2f}; "
          f"cache written in {write_s:.1f}s")  # fmt: skip
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
