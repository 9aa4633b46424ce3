"""A tiny training run in its own process, for the kill tests (not a test module).

``python kill_worker.py RUN_DIR MAX_STEPS [--resume]``: the engine-test Tiny model trained with
a checkpoint every step (the newest two kept) and a short sleep per step, so a parent process
can SIGKILL or SIGTERM it at any moment, including in the middle of a save. Exit status 143
after a SIGTERM stop, as the CLI does.
"""

from __future__ import annotations

import sys
import time

import torch
from engine_helpers import cfg, make_batches, make_model, mse_step

from attnkd.engine import Terminated, fit


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    run_dir, max_steps, resume = argv[0], int(argv[1]), "--resume" in argv
    c = cfg(max_steps=max_steps, save_every=1, log_every=1, keep_checkpoints=2)
    model = make_model()
    inner = mse_step(model)

    def step(batch):
        time.sleep(0.01)
        return inner(batch)

    try:
        fit(c, model, step, make_batches(c.batch_size), run_dir, resume=resume, progress=False)
    except Terminated as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
