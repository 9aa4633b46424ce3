"""Kill a training process at random moments (SIGKILL: no chance to save) and resume each time;
the final weights must equal an uninterrupted run's bit for bit. SIGTERM stops cleanly (exit
status 143, step saved) and resumes exactly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import attnkd
from attnkd.engine import read_metrics, read_state

HERE = Path(__file__).parent
STEPS = 40


def _start(run_dir: Path, resume: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(attnkd.__file__).parents[1]),
                                                        str(HERE)]))  # fmt: skip
    args = [sys.executable, str(HERE / "kill_worker.py"), str(run_dir), str(STEPS)]
    return subprocess.Popen(args + (["--resume"] if resume else []), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _steps_logged(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x)["step"] for x in lines if x.endswith("}") and '"train"' in x]
    return max(steps, default=0)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "last" / "model.safetensors")


def _kill_and_resume(tmp_path: Path, kills: int, seed: int) -> list[int]:
    """Run, SIGKILL at ``kills`` random moments (each resumed), finish; returns kill steps."""
    rng = random.Random(seed)
    run = tmp_path / "cut"
    killed_at = []
    proc = _start(run)
    for _ in range(kills):
        # step 2 logged means step 1 saved: there is always something to resume
        target = min(STEPS - 2, max(2, _steps_logged(run) + rng.randint(1, 3)))
        deadline = time.monotonic() + 120
        while _steps_logged(run) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.012))  # anywhere in the step, often inside the save
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(_steps_logged(run))
        proc = _start(run, resume=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert read_state(run / "checkpoints" / "last").step == STEPS
    return killed_at


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("full")
    proc = _start(run)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return _weights(run)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_twice_then_resume_is_bitwise_exact(tmp_path, reference):
    killed = _kill_and_resume(tmp_path, kills=2, seed=0)
    assert len(killed) == 2
    assert _equal(_weights(tmp_path / "cut"), reference)
    resumes = read_metrics(tmp_path / "cut", "resume")
    assert len(resumes) == 2 and all(r["checkpoint"].startswith("step-") for r in resumes)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_ten_random_times_bitwise_exact(tmp_path, reference, seed):
    killed = _kill_and_resume(tmp_path, kills=10, seed=seed)
    assert len(killed) == 10
    assert _equal(_weights(tmp_path / "cut"), reference), f"killed after steps {killed}"


def test_sigterm_exits_143_with_step_saved_and_resumes_exactly(tmp_path, reference):
    run = tmp_path / "term"
    proc = _start(run)
    while _steps_logged(run) < 5:
        assert proc.poll() is None
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    (ev,) = read_metrics(run, "terminated")
    assert f"stopped on SIGTERM after step {ev['step']}" in err and "--resume" in err
    assert read_state(run / "checkpoints" / "last").step == ev["step"] < STEPS
    proc = _start(run, resume=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert _equal(_weights(run), reference)
