"""SIGKILL a staged run (``attnkd distill``, its own process) in the middle of stage 2, at no
particular moment (possibly mid-save), then ``--resume``: stage 1 is skipped, stage 2 continues
from its last step checkpoint, and the final student equals an uninterrupted run's bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SRC = Path(__file__).resolve().parents[2] / "src"
STAGES = ("stages=[{name: general}, {name: task, data: {train_sources: [sst2:train]}, "
          "train: {max_steps: 12, save_every: 1, eval_every: 4}}]")  # fmt: skip


def _cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "attnkd", "distill", *args, "--no-progress"]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{out}\n{err}"


def _steps(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return max((e["step"] for e in lines if e.get("event") == "train"), default=0)


def test_sigkill_inside_stage_two_then_resume_is_bitwise_exact(base_overrides, tmp_path):
    args = [*base_overrides, STAGES, "train.log_every=1"]
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
    _finish(_cli([*args, "name=full"], tmp_path))
    proc = _cli([*args, "name=cut"], tmp_path)
    stage2 = out / "cut" / "stages" / "02-task" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while _steps(stage2) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()  # SIGKILL: no chance to save
    proc.communicate(timeout=60)
    manifest = json.loads((out / "cut" / "stages.json").read_text())
    assert [s["done"] for s in manifest["stages"]] == [True, False]
    assert not (out / "cut" / "results.json").exists()
    _finish(_cli([*args, "name=cut", "--resume"], tmp_path))
    events = [json.loads(x) for x in stage2.read_text().splitlines() if x.strip()]
    assert [e["event"] for e in events].count("resume") == 1
    stage1 = out / "cut" / "stages" / "01-general" / "metrics.jsonl"
    kinds = [json.loads(x)["event"] for x in stage1.read_text().splitlines() if x.strip()]
    assert kinds.count("start") == 1 and "resume" not in kinds  # stage 1 was not run again
    for sub in ("student", "stages/01-general/student", "stages/02-task/student"):
        a = load_file(out / "full" / sub / "model.safetensors")
        b = load_file(out / "cut" / sub / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
