"""Distributed engine: rank sharding of batches, torchrun context, and 2 gloo ranks on CPU
(DDP and FSDP2) against one process with the doubled batch.

Tolerances (2 ranks x batch b vs 1 process x batch 2b, float32): the two runs see the same rows
in the same order and differ only in how sums are ordered (the all-reduce averages two per-rank
means; one process takes one mean over 2b rows), ~1e-7 relative per value. After 12 AdamW steps
the weights differ by ~6e-8 where training moved them by ~6e-2; ``WEIGHT_ATOL`` = 1e-5 leaves room
for other BLAS builds and still fails on any real difference (a wrong row, a missed all-reduce,
a decayed unused parameter). Losses: ``LOSS_RTOL`` = 1e-5. Resuming at the same world size
repeats the same arithmetic, so it is compared bitwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_worker import PER_RANK, STEPS, make_blocks, train
from engine_helpers import collate, make_items

from attnkd.engine import ShuffledBatches, load_checkpoint, read_metrics
from attnkd.engine.distributed import DistContext, NullWriter, RankShard, from_env, shard_rows
from attnkd.errors import ConfigError

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5


# ------------------------------------------------------------------------------ fast


def test_rank_shards_concatenate_to_the_global_batch_in_order():
    glob = ShuffledBatches(make_items(), 8, collate, seed=3)
    shards = [RankShard(glob, r, 2) for r in range(2)]
    assert all(s.num_batches == glob.num_batches for s in shards)
    for epoch, index in [(0, 0), (0, 5), (2, 3)]:
        x, y = glob.batch_at(epoch, index)
        parts = [s.batch_at(epoch, index) for s in shards]
        assert all(p[0].shape[0] == 4 for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_shard_rows_keeps_dict_structure_and_padding_width():
    batch = {"input_ids": torch.arange(24).view(6, 4), "attention_mask": torch.ones(6, 4)}
    part = shard_rows(batch, 2, 3)
    assert set(part) == set(batch) and part["input_ids"].shape == (2, 4)
    assert torch.equal(part["input_ids"], batch["input_ids"][4:6])


def test_shard_rows_refuses_an_uneven_batch():
    with pytest.raises(ValueError, match="does not split evenly"):
        shard_rows(torch.zeros(5, 2), 0, 2)
    with pytest.raises(TypeError):
        shard_rows("text", 0, 2)


def test_context_from_torchrun_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert from_env() == DistContext()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = from_env()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (3, 4, 1, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK"):
        from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="integer"):
        from_env()


def test_validation_rejects_an_unknown_strategy_before_anything_loads():
    from attnkd.config.schema import TrainConfig
    from attnkd.engine.device import check_train_settings

    check_train_settings(TrainConfig(distributed="fsdp"))
    with pytest.raises(ConfigError, match="train.distributed"):
        check_train_settings(TrainConfig(distributed="zero3"))


def test_null_writer_writes_nothing(tmp_path):
    w = NullWriter()
    w.log({"event": "train", "step": 1})
    w.close()
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------- 2 ranks vs 1 process


def _torchrun(out: Path, strategy: str) -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE / "dist_worker.py"), str(out), strategy]  # fmt: skip
    r = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, batch 2 * PER_RANK (same worker code, world size 1)."""
    out = tmp_path_factory.mktemp("one")
    torch_threads = torch.get_num_threads()
    try:
        train(out, "ddp", 2 * PER_RANK)
    finally:
        torch.set_num_threads(torch_threads)
    return out


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_ranks(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param)
    _torchrun(out, request.param)
    return request.param, out


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    model = make_blocks()
    load_checkpoint(ckpt, model)  # a 2-rank checkpoint loads in one process
    return model.state_dict()


def _losses(run: Path) -> list[float]:
    return [e["loss"] for e in read_metrics(run, "train")]


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_doubled_batch(reference, two_ranks):
    _, out = two_ranks
    ref, got = _weights(reference / "run/checkpoints/last"), _weights(out / "run/checkpoints/last")
    start = make_blocks().state_dict()
    assert max((ref[k] - start[k]).abs().max() for k in ref) > 1e-2  # training moved them
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=WEIGHT_ATOL, rtol=0, msg=k)
    # the parameter no loss reads keeps its initial value (no gradient, no weight decay)
    assert torch.equal(got["unused.weight"], start["unused.weight"])
    assert _losses(out / "run") == pytest.approx(_losses(reference / "run"), rel=LOSS_RTOL)
    evals = [e["metrics"]["mse"] for e in read_metrics(out / "run", "eval")]
    ref_evals = [e["metrics"]["mse"] for e in read_metrics(reference / "run", "eval")]
    assert evals == pytest.approx(ref_evals, rel=LOSS_RTOL)


@pytest.mark.slow
def test_only_rank_0_writes_each_event_once(two_ranks):
    _, out = two_ranks
    events = read_metrics(out / "run")
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, STEPS + 1))
    assert [e["event"] for e in events].count("start") == 1
    assert [e["step"] for e in events if e["event"] == "eval"] == [4, 8, 12]
    ckpts = out / "run/checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["best", "last", "step-00000006", "step-00000012"]
    assert (ckpts / "last").resolve() == (ckpts / "step-00000012").resolve()


@pytest.mark.slow
def test_resume_on_two_ranks_is_bitwise_the_uninterrupted_run(two_ranks):
    _, out = two_ranks
    full, resumed = (
        _weights(out / "run/checkpoints/last"),
        _weights(out / "resumed/checkpoints/last"),
    )
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert _losses(out / "resumed")[-STEPS // 2 :] == _losses(out / "run")[-STEPS // 2 :]


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_in_one_process(reference, two_ranks, tmp_path):
    """World size 2 -> 1 at the same global batch: the same batches, so the same result."""
    _, out = two_ranks
    shutil.copytree(out / "half", tmp_path / "half")
    with pytest.warns(UserWarning, match="batch_size"):  # per process: 4 -> 8, same global batch
        train_one_session = _resume_one_process(tmp_path)
    ref = _weights(reference / "run/checkpoints/last")
    got = _weights(train_one_session / "checkpoints/last")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=WEIGHT_ATOL, rtol=0, msg=k)


def _resume_one_process(out: Path) -> Path:
    """The worker's second session only ('resumed'), in this process with batch 2b."""
    import dist_worker

    threads = torch.get_num_threads()
    try:
        dist_worker.train(out, "ddp", 2 * PER_RANK, sessions=("resumed",))
    finally:
        torch.set_num_threads(threads)
    return out / "resumed"


@pytest.mark.slow
def test_ranks_skip_and_stop_together_when_one_rank_has_a_problem(tmp_path):
    """A NaN loss on rank 1 alone makes both ranks skip that step (their weights stay equal);
    SIGTERM on rank 1 alone makes both save and stop at the same step (no hang)."""
    from safetensors.torch import load_file

    _torchrun(tmp_path, "faults")
    w0, w1 = (load_file(str(tmp_path / f"skip/rank{r}.safetensors")) for r in range(2))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    events = read_metrics(tmp_path / "skip")
    assert [e["step"] for e in events if e["event"] == "nonfinite"] == [3]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 4, 5, 6]
    stops = [(tmp_path / f"term/rank{r}.txt").read_text() for r in range(2)]
    assert stops == ["3", "3"]
    assert (tmp_path / "term/checkpoints/step-00000003").is_dir()
