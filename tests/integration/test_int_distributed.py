"""``torchrun --nproc-per-node 2 -m attnkd distill`` end to end on tiny models (gloo, CPU).

The causal-LM run checks the whole path (task batches built globally and sliced per rank, the
DDP-wrapped Distiller, the teacher outside it) against one process with the doubled batch: LM
blocks all have the same length, so every rank's loss averages as many tokens and the two runs
agree up to float32 summation order. The sentence runs check that DDP and FSDP2 complete with
one results.json, written and exported by rank 0 only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_int_distill_lm import _cfg, lm_setup  # noqa: F401 (fixture)

from attnkd.config.io import dump_yaml
from attnkd.engine import read_metrics
from attnkd.engine.checkpoint import _load_tensors
from attnkd.errors import AttnkdError

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SRC = Path(__file__).resolve().parents[2] / "src"

LOSS_RTOL = 1e-5
"""Per-step loss, 2 ranks x b vs 1 x 2b: the runs differ only in float32 summation order (two
per-rank means averaged by the all-reduce vs one mean), ~1e-7 relative per step."""
WEIGHT_ATOL = 1e-5
"""Final weights after 6 AdamW steps: rounding differences of ~1e-7 in the gradients move a
weight by far less than this, while training moves the weights by ~1e-3 or more (checked)."""


def torchrun_distill(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m attnkd distill ARGS``
    (``--standalone`` picks a free port), with this worktree's code on the path."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "attnkd", "distill", *args]  # fmt: skip
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise AssertionError(f"torchrun failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _student_weights(run: Path) -> dict[str, torch.Tensor]:
    return _load_tensors(run / "checkpoints" / "last" / "model.safetensors")


def test_two_ranks_match_one_process_with_the_doubled_batch(lm_setup, tmp_path):  # noqa: F811
    one = _cfg(lm_setup, "name=one", "train.batch_size=4", "train.log_every=1")
    two = _cfg(lm_setup, "name=two", "train.batch_size=2", "train.log_every=1")
    from attnkd.distill import run_distill

    r1 = run_distill(one, progress=False)
    dump_yaml(two, tmp_path / "two.yaml")
    out = torchrun_distill([str(tmp_path / "two.yaml"), "--no-progress"], tmp_path)
    assert out.stdout.count("run folder:") == 1  # only rank 0 reports

    run1, run2 = Path(one.output_dir) / "one", Path(two.output_dir) / "two"
    l1 = [e["loss"] for e in read_metrics(run1, "train")]
    l2 = [e["loss"] for e in read_metrics(run2, "train")]
    assert len(l1) == len(l2) == 6  # rank 0 alone wrote metrics: each step once
    assert l2 == pytest.approx(l1, rel=LOSS_RTOL)
    w1, w2 = _student_weights(run1), _student_weights(run2)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=WEIGHT_ATOL, rtol=0, msg=k)
    assert any(k.startswith("student.") for k in w1)  # the Distiller's keys, as in one process
    r2 = json.loads((run2 / "results.json").read_text())
    assert r2["train"]["steps"] == r1["train"]["steps"] == 6
    assert r2["student"]["perplexity"] == pytest.approx(r1["student"]["perplexity"], rel=1e-4)
    assert r2["teacher"] == r1["teacher"]


def test_sharded_teacher_gives_the_losses_of_a_whole_one(lm_setup, tmp_path):  # noqa: F811
    """train.shard_teacher: the frozen teacher split over 2 ranks by FSDP2 (one block gathered
    at a time) gives the per-step losses of one process holding it whole, and rank 0's final
    teacher score comes from an unsharded copy."""
    one = _cfg(lm_setup, "name=whole-teacher", "train.batch_size=4", "train.log_every=1")
    two = _cfg(lm_setup, "name=sharded-teacher", "train.batch_size=2", "train.log_every=1",
               "train.shard_teacher=true")  # fmt: skip
    from attnkd.distill import run_distill

    r1 = run_distill(one, progress=False)
    dump_yaml(two, tmp_path / "two.yaml")
    out = torchrun_distill([str(tmp_path / "two.yaml"), "--no-progress"], tmp_path)
    assert "teacher sharded by FSDP2: True" in out.stdout + out.stderr  # rank 0 logs it
    run1, run2 = Path(one.output_dir) / one.name, Path(two.output_dir) / two.name
    l1 = [e["loss"] for e in read_metrics(run1, "train")]
    l2 = [e["loss"] for e in read_metrics(run2, "train")]
    assert len(l2) == 6 and l2 == pytest.approx(l1, rel=LOSS_RTOL)
    w1, w2 = _student_weights(run1), _student_weights(run2)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=WEIGHT_ATOL, rtol=0, msg=k)
    r2 = json.loads((run2 / "results.json").read_text())
    assert r2["teacher"] == r1["teacher"]


def test_sharding_a_trainable_module_is_refused(monkeypatch):
    from attnkd.engine import distributed

    ctx = distributed.DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    monkeypatch.setattr(distributed, "current", lambda: ctx)
    with pytest.raises(AttnkdError, match="train.shard_teacher"):
        distributed.shard_frozen(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sentence_run_on_two_ranks_writes_one_result(strategy, base_overrides, tmp_path):
    from transformers import AutoModel

    args = [*base_overrides, "name=two", f"train.distributed={strategy}", "train.save_every=3"]
    out = torchrun_distill([*args, "--no-progress"], tmp_path)
    assert out.stdout.count("run folder:") == 1
    run = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir="))) / "two"
    results = json.loads((run / "results.json").read_text())
    assert results["train"]["steps"] == 6
    assert [e["step"] for e in read_metrics(run, "train")] == [2, 4, 6]
    assert [e["event"] for e in read_metrics(run)].count("start") == 1
    assert AutoModel.from_pretrained(run / "student").config.num_hidden_layers == 2
    assert not list(run.parent.glob("*.tmp*")) and not list(run.glob("**/*.tmp*"))


def test_unknown_strategy_is_a_config_error():
    from attnkd.engine import distributed

    with pytest.raises(AttnkdError, match="train.distributed"):
        distributed.wrap(torch.nn.Linear(2, 2), "zero3")
