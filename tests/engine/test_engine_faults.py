"""Faults in the loop: non-finite loss/gradient every step, choosing the newest valid checkpoint,
keeping a few step checkpoints, stopping cleanly on SIGTERM."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from engine_helpers import (
    cfg,
    interrupt_after,
    make_batches,
    make_model,
    mse_step,
    state_equal,
)

from attnkd.engine import (
    CheckpointError,
    NonFiniteError,
    StepOutput,
    Terminated,
    fit,
    load_checkpoint,
    read_metrics,
    read_state,
)
from attnkd.engine.resume import step_dirs
from attnkd.errors import AttnkdError, ConfigError


def _run(tmp, c, resume=False, step_fn=None, model=None, **kw):
    model = model if model is not None else make_model()
    res = fit(c, model, step_fn or mse_step(model), make_batches(c.batch_size), tmp,
              resume=resume, progress=False, **kw)  # fmt: skip
    return model, res


def _poisoned(model, bad_calls: set[int], kind: str = "loss", snapshots: list | None = None):
    """mse step whose micro-batch number ``i`` (0-based) in ``bad_calls`` goes non-finite:
    kind 'loss' (NaN in the 'mse' term), 'inf' (+inf loss, terms finite) or 'grad' (finite
    loss, NaN gradient: d/dx sqrt(|x|) at 0)."""
    calls = [0]

    def step(batch):
        i = calls[0]
        calls[0] += 1
        if snapshots is not None:
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        x, y = batch
        pred = model(x)
        loss = ((pred - y) ** 2).mean()
        if i in bad_calls and kind == "loss":
            loss = loss * float("nan")
        elif i in bad_calls and kind == "inf":
            loss = loss + float("inf")
            return StepOutput(loss, {"mse": 1.0}, len(x))
        elif i in bad_calls and kind == "grad":
            loss = loss + torch.sqrt((pred - pred.detach()).abs().sum())
        return StepOutput(loss, {"mse": loss.item(), "other": 0.5}, len(x))

    return step


# ----------------------------------------------------------------------------- non-finite


def test_nan_loss_aborts_on_that_step_without_any_log_line(tmp_path):
    """D6: with log_every=0 the old loop never looked at the loss and trained on into NaN."""
    model = make_model()
    c = cfg(max_steps=8, log_every=0, save_every=2)
    with pytest.raises(NonFiniteError) as e:
        _run(tmp_path, c, model=model, step_fn=_poisoned(model, {4}))
    msg = str(e.value)
    assert isinstance(e.value, AttnkdError)
    assert "loss terms ['mse']" in msg and "'other'" not in msg
    assert "step 5 (epoch 0, batch index 4)" in msg and "train.nonfinite: skip" in msg
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN update applied
    assert read_state(tmp_path / "checkpoints" / "last").step == 4  # last good save kept
    assert read_metrics(tmp_path, "nonfinite") == [
        {"event": "nonfinite", "step": 5, "action": "abort"}
    ]


@pytest.mark.parametrize(
    "kind,accum,expect",
    [
        ("inf", 1, "non-finite loss (its terms are all finite) at step 3 (epoch 0, batch index 2)"),
        ("grad", 1, "non-finite gradient (norm nan) at step 3 (epoch 0 batch index 2)"),
        ("loss", 2, "loss terms ['mse'] at step 2 (epoch 0, batch index 3)"),
    ],
)
def test_abort_names_what_and_where(tmp_path, kind, accum, expect):
    model = make_model()
    step = _poisoned(model, {2} if accum == 1 else {3}, kind)
    with pytest.raises(NonFiniteError, match=expect.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):  # fmt: skip
        _run(tmp_path, cfg(max_steps=6, grad_accum=accum), model=model, step_fn=step)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_skip_drops_exactly_that_update(tmp_path, kind):
    model = make_model(dropout=0.0)
    snaps: list = []
    c = cfg(max_steps=6, nonfinite="skip", log_every=1)
    _, res = _run(tmp_path, c, model=model, step_fn=_poisoned(model, {2}, kind, snaps))
    assert res.steps_done == 6 and res.skipped_steps == 1
    # weights before step 4 == weights before step 3: step 3 changed nothing
    assert all(torch.equal(snaps[3][k], v) for k, v in snaps[2].items())
    assert not all(torch.equal(snaps[2][k], v) for k, v in snaps[1].items())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    (ev,) = read_metrics(tmp_path, "nonfinite")
    assert ev["action"] == "skip" and ev["step"] == 3 and ev["skipped_steps"] == 1
    train = read_metrics(tmp_path, "train")
    assert [r["step"] for r in train] == [1, 2, 4, 5, 6]  # no loss line for the dropped step
    assert all(math.isfinite(r["loss"]) for r in train)
    assert read_state(tmp_path / "checkpoints" / "last").skipped_steps == 1
    assert read_metrics(tmp_path, "stop")[-1]["skipped_steps"] == 1


def test_skipped_step_keeps_resume_exact(tmp_path):
    c = cfg(max_steps=8, nonfinite="skip", save_every=1)
    full = make_model()
    _run(tmp_path / "full", c, model=full, step_fn=_poisoned(full, {3}))
    cut = make_model()
    step = interrupt_after(_poisoned(cut, {3}), 5)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", c, model=cut, step_fn=step)
    resumed = make_model(seed=3)
    _, res = _run(tmp_path / "cut", c, resume=True, model=resumed, step_fn=mse_step(resumed))
    assert res.skipped_steps == 1 and state_equal(full, resumed)


def test_bad_fault_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.nonfinite"):
        _run(tmp_path, cfg(nonfinite="ignore"))
    with pytest.raises(ConfigError, match="train.keep_checkpoints"):
        _run(tmp_path, cfg(keep_checkpoints=0))


# ----------------------------------------------------------------- checkpoints and resume


def test_keeps_the_newest_step_checkpoints_and_points_last(tmp_path):
    _run(tmp_path, cfg(max_steps=7, save_every=2, keep_checkpoints=2))
    ck = tmp_path / "checkpoints"
    assert [s for s, _ in step_dirs(ck)] == [6, 7]  # 2 and 4 pruned; 7 = the final save
    assert os.readlink(ck / "last") == "step-00000007"
    assert read_state(ck / "last").step == 7
    assert sorted(p.name for p in ck.iterdir()) == ["last", "step-00000006", "step-00000007"]
    _run(tmp_path / "three", cfg(max_steps=6, save_every=1, keep_checkpoints=3))
    assert [s for s, _ in step_dirs(tmp_path / "three" / "checkpoints")] == [4, 5, 6]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no-state"])
def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path, damage):
    c = cfg(max_steps=10, save_every=2)
    full, _ = _run(tmp_path / "full", c)

    model = make_model()
    stop_after_6 = interrupt_after(mse_step(model), 6)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", c, model=model, step_fn=stop_after_6)
    ck = tmp_path / "cut" / "checkpoints"
    assert [s for s, _ in step_dirs(ck)] == [4, 6]
    newest = ck / "step-00000006"
    f = newest / ("state.json" if damage == "no-state" else "model.safetensors")
    data = f.read_bytes()
    if damage == "flip":
        f.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    else:
        f.unlink()

    resumed = make_model(seed=11)
    with pytest.warns(
        UserWarning, match=r"skipping checkpoint step-00000006: .*(model\.safetensors|state\.json)"
    ):  # noqa: E501
        _, res = _run(tmp_path / "cut", c, resume=True, model=resumed)
    assert res.resumed_from == ck / "step-00000004"
    assert read_metrics(tmp_path / "cut", "resume")[-1]["checkpoint"] == "step-00000004"
    assert res.steps_done == 10 and state_equal(full, resumed)  # steps 5-6 simply redone


def test_resume_without_any_valid_checkpoint_names_each(tmp_path):
    _run(tmp_path, cfg(max_steps=2, save_every=1))
    for _, d in step_dirs(tmp_path / "checkpoints"):
        (d / "rng.safetensors").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError) as e:
        _run(tmp_path, cfg(max_steps=4, save_every=1), resume=True)
    assert "step-00000002" in str(e.value) and "step-00000001" in str(e.value)
    assert "rng.safetensors" in str(e.value)


def test_resume_before_the_first_save_starts_at_step_zero(tmp_path):
    full, _ = _run(tmp_path / "full", cfg(max_steps=4))
    with pytest.raises(CheckpointError, match="no checkpoint to resume .this run never started"):
        _run(tmp_path / "cut", cfg(max_steps=4), resume=True)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "metrics.jsonl").write_text('{"event": "start", "step": 0}\n')
    leftover = tmp_path / "cut" / "checkpoints" / ".step-00000001.tmp-abc"
    leftover.mkdir(parents=True)  # killed inside the first save
    (leftover / "model.safetensors").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="no checkpoint in .* to resume; starting at step 0"):
        model, res = _run(tmp_path / "cut", cfg(max_steps=4), resume=True)
    assert res.resumed_from is None and state_equal(full, model)
    assert not leftover.exists()


def test_resume_reads_the_older_single_last_folder(tmp_path):
    """Runs written before step checkpoints kept one ``checkpoints/last/`` folder."""
    from attnkd.engine import build_optimizer, capture_rng, save_checkpoint
    from attnkd.engine.checkpoint import TrainState

    c = cfg(max_steps=5)
    model = make_model()
    extra = {"train": {}, "num_batches": 12}
    opt = build_optimizer(model, c)
    save_checkpoint(
        tmp_path / "checkpoints" / "last", model, opt, TrainState(), capture_rng(), extra
    )
    _, res = _run(tmp_path, c, resume=True)
    assert res.resumed_from == tmp_path / "checkpoints" / "last" and res.steps_done == 5
    assert os.readlink(tmp_path / "checkpoints" / "last") == "step-00000005"


def test_fresh_start_removes_the_old_runs_checkpoints(tmp_path):
    scores = iter([0.9, 0.1])
    _run(tmp_path, cfg(max_steps=4, eval_every=2), evaluate=lambda: {"s": next(scores)},
         select_metric="s")  # fmt: skip
    assert (tmp_path / "checkpoints" / "best").is_dir()
    with pytest.warns(UserWarning, match="starting afresh"):
        _, res = _run(tmp_path, cfg(max_steps=2))
    assert res.best_step is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last", "step-00000002"]


# ------------------------------------------------------------------------------- SIGTERM


def test_sigterm_saves_the_step_and_stops_then_resume_is_exact(tmp_path):
    c = cfg(max_steps=10, save_every=4)
    full, _ = _run(tmp_path / "full", c)
    model = make_model()
    inner = mse_step(model)
    calls = [0]

    def step(batch):
        calls[0] += 1
        if calls[0] == 6:  # arrives mid-step: the step finishes, then the loop stops
            os.kill(os.getpid(), signal.SIGTERM)
        return inner(batch)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as e:
        _run(tmp_path / "cut", c, model=model, step_fn=step)
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    assert e.value.step == 6 and e.value.exit_code == 143
    assert "step-00000006" in str(e.value) and "--resume" in str(e.value)
    assert read_state(tmp_path / "cut" / "checkpoints" / "last").step == 6
    assert read_metrics(tmp_path / "cut", "terminated")[0]["saved"] == "step-00000006"
    resumed = make_model(seed=4)
    _, res = _run(tmp_path / "cut", c, resume=True, model=resumed)
    assert res.steps_done == 10 and state_equal(full, resumed)


def test_cli_exits_143_on_sigterm_stop(monkeypatch, capsys):
    import attnkd.cli as cli

    def stopped(args):
        raise Terminated(7, "runs/x/checkpoints/step-00000007")

    monkeypatch.setattr(cli, "cmd_distill", stopped)  # build_parser binds it at call time
    assert cli.main(["distill"]) == 143
    assert "stopped on SIGTERM after step 7" in capsys.readouterr().err


def test_best_weights_load_after_resume(tmp_path):
    scores = iter([0.2, 0.8, 0.5])
    model = make_model()
    _, res = _run(tmp_path, cfg(max_steps=6, eval_every=2), model=model,
                  evaluate=lambda: {"s": next(scores)}, select_metric="s")  # fmt: skip
    m = make_model(seed=9)
    assert load_checkpoint(tmp_path / "checkpoints" / "best", m).state.best_step == res.best_step
