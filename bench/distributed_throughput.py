"""Training throughput of 1 process vs N processes (torchrun, DDP, gloo on CPU), side by side.

Workload: the default recipe's step (all-MiniLM-L6-v2 teacher, the 3-layer cut {0, 2, 5}
student, MiniLMv2 relations + last-layer hidden MSE + sentence-embedding MSE, frozen embeddings)
on the default training corpus (first ``--sentences`` sentences), through the real loop
(:func:`attnkd.engine.fit`) with the same *global* batch in both configurations:

- ``one``: 1 process, ``--threads`` intra-op threads, batch ``--batch``;
- ``many``: ``--nproc`` processes under ``torchrun --standalone``, ``threads / nproc`` threads each,
  batch ``--batch / nproc`` per rank (gradients averaged by DDP over gloo);
- ``one1`` (with ``--control``): 1 process with ``threads / nproc`` threads, batch ``--batch``: the
  per-process work of ``many`` without the parallelism, to tell the gain of processes from the
  cost of intra-op threads (which collapses when other work holds the cores).

Configurations alternate over ``--rounds`` (the first one rotates each round), so background
load hits both alike. Throughput is global sentences/s over the logged windows after the first
one (warm-up excluded), taken from rank 0's metrics.jsonl (items summed over ranks). The table
gives the median over rounds of each and the paired ratio many/one (median over rounds of the
ratio within a round).

    python bench/distributed_throughput.py --rounds 2 --steps 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def worker(out: Path, batch: int, steps: int, log_every: int, sentences: int) -> None:
    """One rank (or the single process): train ``steps`` steps, rank 0 writes throughput.json."""
    from attnkd.config.schema import TrainConfig, default_recipe
    from attnkd.data.corpus import build_corpus
    from attnkd.distill import Distiller, make_step
    from attnkd.engine import distributed, fit, read_metrics
    from attnkd.losses.terms import build_terms
    from attnkd.models.adapters import geometry
    from attnkd.models.load import freeze
    from attnkd.students.build import build_student
    from attnkd.tasks import get_task
    from attnkd.tasks.sentence import GroupedBatches

    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    ctx = distributed.init()
    cfg = default_recipe()
    task = get_task(cfg.task)
    teacher_m = task.load(cfg.teacher.name, cfg.teacher.attn_implementation)
    teacher, tok = freeze(teacher_m.model), teacher_m.tokenizer
    torch.manual_seed(0)
    student, _ = build_student(teacher, cfg.student.layers)
    student.get_input_embeddings().weight.requires_grad_(False)
    terms = build_terms(cfg.losses, teacher_m.geometry, geometry(student.config))
    distiller = Distiller(student, terms)
    corpus = build_corpus(cfg.data.train_sources, cfg.data.data_dir, max_sentences=sentences)
    global_batches = GroupedBatches(corpus.sentences, tok, batch, cfg.data.max_length, seed=0)
    batches = distributed.RankShard(global_batches, ctx.rank, ctx.world_size)
    model = distributed.wrap(distiller, "ddp")
    train = TrainConfig(
        lr=1e-4, max_steps=steps, batch_size=batch // ctx.world_size, log_every=log_every,
        eval_every=0, save_every=0, warmup_ratio=0.02,
    )  # fmt: skip
    fit(train, distiller, make_step(teacher, distiller, model), batches, out / "run",
        progress=False)  # fmt: skip
    if ctx.is_main:
        windows = read_metrics(out / "run", "train")[1:]  # the first window is warm-up
        rates = [w["items_per_s"] for w in windows]
        result = {
            "world_size": ctx.world_size,
            "threads_per_process": torch.get_num_threads(),
            "sentences_per_s": len(rates) / sum(1 / r for r in rates),  # total items / time
            "window_losses": [w["loss"] for w in windows],
        }
        (out / "throughput.json").write_text(json.dumps(result))
    distributed.teardown()


def _launch(kind: str, args, out: Path) -> dict:
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    threads = args.threads if kind == "one" else max(1, args.threads // args.nproc)
    env["OMP_NUM_THREADS"] = env["BENCH_THREADS"] = str(threads)
    job = ["--worker", str(out), "--batch", str(args.batch), "--steps", str(args.steps),
           "--log-every", str(args.log_every), "--sentences", str(args.sentences)]  # fmt: skip
    if kind in ("one", "one1"):
        cmd = [sys.executable, __file__, *job]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={args.nproc}", __file__, *job]  # fmt: skip
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    result = json.loads((out / "throughput.json").read_text())
    result["wall_s"] = time.monotonic() - t0
    result["load_avg_1min_before_after"] = [load0, os.getloadavg()[0]]  # other users of the cores
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32, help="global batch (sentences per step)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads in all, per configuration")
    ap.add_argument("--sentences", type=int, default=4000)
    ap.add_argument("--control", action="store_true", help="also 1 process x threads/nproc")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(Path(args.worker), args.batch, args.steps, args.log_every, args.sentences)
        return 0
    if args.batch % args.nproc:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --nproc {args.nproc}")
    kinds = ["one", "many", *(["one1"] if args.control else [])]
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                res = _launch(kind, args, Path(tmp) / f"{kind}-{r}")
                runs[kind].append(res)
                print(f"round {r} {kind:>4}: {res['sentences_per_s']:.1f} sentences/s "
                      f"(wall {res['wall_s']:.0f} s)", flush=True)  # fmt: skip
    med = {k: statistics.median(x["sentences_per_s"] for x in runs[k]) for k in kinds}
    paired = statistics.median(
        m["sentences_per_s"] / o["sentences_per_s"] for o, m in zip(runs["one"], runs["many"])
    )
    ratios = {"paired_ratio_many_over_one": paired}
    if args.control:
        ratios["paired_ratio_many_over_one1"] = statistics.median(
            m["sentences_per_s"] / o["sentences_per_s"] for o, m in zip(runs["one1"], runs["many"])
        )
    print(f"\n1 process x {args.threads} threads: {med['one']:.1f} sentences/s")
    if args.control:
        print(f"1 process x {max(1, args.threads // args.nproc)} thread(s): "
              f"{med['one1']:.1f} sentences/s")  # fmt: skip
    print(f"{args.nproc} processes x {max(1, args.threads // args.nproc)} thread(s): "
          f"{med['many']:.1f} sentences/s; paired ratios {ratios}")  # fmt: skip
    if args.json:
        result = {
            "command": "python bench/distributed_throughput.py " + " ".join(argv or sys.argv[1:]),
            "workload": "default recipe step (all-MiniLM-L6-v2 -> 3-layer cut), global batch "
            f"{args.batch}, {args.steps} steps, first log window excluded",
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "median_sentences_per_s": med,
            **ratios,
            "load_note": "taken under load: other agents' jobs shared the cores (see each run's "
            "load_avg_1min_before_after); intra-op threads suffer most from that",
            "runs": runs,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
