"""A tiny training run in its own process, and the helpers that kill it (not a test module).

``python kill_worker.py RUN_DIR MAX_STEPS [--resume]`` trains the engine tests' Tiny model with
a checkpoint every step (the newest two kept) and a short sleep per step, so a parent process
can SIGKILL or SIGTERM it at any moment, including in the middle of a save; exit status 143
after a SIGTERM stop, as the CLI does. :func:`kill_and_resume` is that parent, used by
``tests/engine/test_engine_kill.py`` and ``scripts/kill_resume.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    from engine_helpers import cfg, make_batches, make_model, mse_step

    from attnkd.engine import Terminated, fit

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


def start(run_dir: Path, steps: int, resume: bool = False) -> subprocess.Popen:
    """Launch this file as a worker training for ``steps`` steps in ``run_dir``."""
    import attnkd

    src = str(Path(attnkd.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(HERE)]))
    args = [sys.executable, str(HERE / "kill_worker.py"), str(run_dir), str(steps)]
    return subprocess.Popen(args + (["--resume"] if resume else []), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def steps_logged(run_dir: Path) -> int:
    """Highest step with a complete ``train`` line in ``metrics.jsonl`` (0 if none)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x)["step"] for x in lines if x.endswith("}") and '"train"' in x]
    return max(steps, default=0)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / "last" / "model.safetensors")


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}: {err}")


def kill_and_resume(run: Path, steps: int, kills: int, seed: int) -> list[int]:
    """Train in ``run``, SIGKILL the worker at ``kills`` random moments (resuming each time)
    and let the last one finish; returns the step logged at each kill."""
    rng = random.Random(seed)
    killed_at = []
    proc = start(run, steps)
    for _ in range(kills):
        # step 2 logged means step 1 saved: there is always something to resume
        target = min(steps - 2, max(2, steps_logged(run) + rng.randint(1, 3)))
        deadline = time.monotonic() + 300
        while steps_logged(run) < target and proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("worker made no progress")
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.012))  # anywhere in the step, often inside the save
        if proc.poll() is not None:
            raise RuntimeError(f"worker ended early: {proc.communicate()}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(steps_logged(run))
        proc = start(run, steps, resume=True)
    finish(proc)
    return killed_at


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
