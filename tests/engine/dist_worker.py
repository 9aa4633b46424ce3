"""One rank of the distributed engine tests, started by ``torchrun`` (or in-process, world 1).

``python -m torch.distributed.run --nproc-per-node 2 dist_worker.py OUT STRATEGY`` trains
:class:`Blocks` with per-rank batch :data:`PER_RANK` for :data:`STEPS` steps through
:func:`attnkd.engine.fit` in two sessions (``STEPS // 2`` steps, a copy of that checkpoint kept
in ``OUT/half``, then a resume to ``STEPS``) and writes its run to ``OUT/run``. The same
function with world size 1 and batch ``2 * PER_RANK`` is the single-process reference.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import torch
from engine_helpers import cfg, collate, make_items
from safetensors.torch import save_file
from torch import nn

from attnkd.engine import ShuffledBatches, StepOutput, distributed, fit
from attnkd.engine.signals import Terminated

PER_RANK = 4
STEPS = 12


class Blocks(nn.Module):
    """x (B, 4) -> (B,): a ModuleList of blocks (FSDP units), a LayerNorm, and a parameter no
    loss reads (like BERT's pooler), which must stay untouched under DDP as in one process."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.inp = nn.Linear(4, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(2))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 1)
        self.unused = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + torch.nn.functional.gelu(block(h))
        return self.out(self.norm(h)).squeeze(-1)


def make_blocks() -> Blocks:
    torch.manual_seed(7)
    return Blocks()


def train(
    out: Path, strategy: str, global_batch: int, sessions: tuple[str, ...] = ("run", "resumed")
) -> None:
    """Both sessions on this rank; ``global_batch`` rows per step over all ranks.

    Session 1 trains ``STEPS`` steps into ``OUT/run`` (rank 0 copies the step ``STEPS // 2``
    checkpoint to ``OUT/half`` as soon as it is on disk); session 2 resumes that copy in
    ``OUT/resumed`` and trains to ``STEPS`` again.
    """
    torch.set_num_threads(1)
    ctx = distributed.current()
    hx, hy = collate(make_items(16, seed=5))
    for name in sessions:
        resume = name == "resumed"
        if resume and ctx.is_main:
            shutil.copytree(out / "half", out / name / "checkpoints" / "last")
        distributed.barrier()
        model = make_blocks()
        wrapped = distributed.wrap(model, strategy)  # FSDP shards `model` in place
        calls = [0]

        def step(batch, wrapped=wrapped, calls=calls, keep=not resume) -> StepOutput:
            calls[0] += 1
            if keep and calls[0] == STEPS // 2 + 1 and ctx.is_main:  # step STEPS//2 is saved
                shutil.copytree(out / "run" / "checkpoints" / "last", out / "half")
            x, y = batch
            loss = ((wrapped(x) - y) ** 2).mean()
            return StepOutput(loss, {"mse": loss.item()}, num_items=len(x))

        def evaluate(model=model) -> dict[str, float]:
            return {"mse": float(((model(hx) - hy) ** 2).mean())}

        batches = distributed.RankShard(
            ShuffledBatches(make_items(), global_batch, collate, seed=0),
            ctx.rank,
            ctx.world_size,
        )
        c = cfg(batch_size=global_batch // ctx.world_size, max_steps=STEPS, log_every=1,
                save_every=STEPS // 2, eval_every=4)  # fmt: skip
        fit(c, model, step, batches, out / name, evaluate, "mse", resume=resume,
            progress=False, select_mode="min")  # fmt: skip


def faults(out: Path) -> None:
    """Decisions every rank must take together, provoked on rank 1 only.

    ``OUT/skip``: rank 1's loss is NaN at step 3 (its gradients stay finite), with
    ``nonfinite: skip``; each rank writes its final weights to ``OUT/skip/rank{r}.safetensors``.
    ``OUT/term``: rank 1 alone gets SIGTERM during step 3; each rank writes the step it stopped at
    to ``OUT/term/rank{r}.txt``.
    """
    torch.set_num_threads(1)
    ctx = distributed.current()
    for name in ("skip", "term"):
        model = make_blocks()
        wrapped = distributed.wrap(model, "ddp")
        calls = [0]

        def step(batch, wrapped=wrapped, calls=calls, name=name) -> StepOutput:
            calls[0] += 1
            x, y = batch
            loss = ((wrapped(x) - y) ** 2).mean()
            if ctx.rank == 1 and calls[0] == 3:
                if name == "skip":
                    loss = loss + float("nan")  # a NaN loss whose gradients are finite
                else:
                    os.kill(os.getpid(), signal.SIGTERM)
            return StepOutput(loss, {"mse": loss.item()}, num_items=len(x))

        batches = distributed.RankShard(
            ShuffledBatches(make_items(), 2 * PER_RANK, collate, seed=0), ctx.rank, 2
        )
        c = cfg(batch_size=PER_RANK, max_steps=6, log_every=1, nonfinite="skip")
        try:
            fit(c, model, step, batches, out / name, progress=False)
            stopped = "finished"
        except Terminated as e:
            stopped = str(e.step)
        if name == "skip":
            save_file(model.state_dict(), str(out / name / f"rank{ctx.rank}.safetensors"))
        else:
            (out / name / f"rank{ctx.rank}.txt").write_text(stopped)


if __name__ == "__main__":
    out_dir, strategy = Path(sys.argv[1]), sys.argv[2]
    context = distributed.init()
    try:
        if strategy == "faults":
            faults(out_dir)
        else:
            train(out_dir, strategy, PER_RANK * context.world_size)
    finally:
        distributed.teardown()
