"""Kill a training process at random moments (SIGKILL: no chance to save) and resume each time;
the final weights must equal an uninterrupted run's bit for bit. SIGTERM stops cleanly (exit
status 143, step saved) and resumes exactly. The worker and the killing loop live in
``kill_worker.py`` (also run by ``scripts/kill_resume.py``, which records the trials)."""

from __future__ import annotations

import signal
import time

import pytest
import torch
from kill_worker import finish, kill_and_resume, start, steps_logged, weights

from attnkd.engine import read_metrics, read_state

STEPS = 40


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("full")
    finish(start(run, STEPS))
    return weights(run)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_twice_then_resume_is_bitwise_exact(tmp_path, reference):
    run = tmp_path / "cut"
    killed = kill_and_resume(run, STEPS, kills=2, seed=0)
    assert len(killed) == 2 and read_state(run / "checkpoints" / "last").step == STEPS
    assert _equal(weights(run), reference)
    resumes = read_metrics(run, "resume")
    assert len(resumes) == 2 and all(r["checkpoint"].startswith("step-") for r in resumes)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_ten_random_times_bitwise_exact(tmp_path, reference, seed):
    killed = kill_and_resume(tmp_path / "cut", STEPS, kills=10, seed=seed)
    assert len(killed) == 10
    assert _equal(weights(tmp_path / "cut"), reference), f"killed after steps {killed}"


def test_sigterm_exits_143_with_step_saved_and_resumes_exactly(tmp_path, reference):
    run = tmp_path / "term"
    proc = start(run, STEPS)
    while steps_logged(run) < 5:
        assert proc.poll() is None
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    (ev,) = read_metrics(run, "terminated")
    assert f"stopped on SIGTERM after step {ev['step']}" in err and "--resume" in err
    assert read_state(run / "checkpoints" / "last").step == ev["step"] < STEPS
    finish(start(run, STEPS, resume=True))
    assert _equal(weights(run), reference)
