"""Failures that surface during a run (disk full while checkpointing, memory running out, a
corrupt checkpoint on resume) become one clear line at the CLI boundary, exit 2, and leave no
half-written checkpoint, student or results behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from cases import record

from attnkd.cli import main


def _partial(run: Path) -> list[str]:
    """Anything a failed run must not leave: temporary folders, a student, results."""
    if not run.exists():
        return []
    bad = [p for p in run.rglob("*") if ".tmp" in p.name or p.name.endswith(".tmp")]
    bad += [p for p in (run / "student", run / "results.json") if p.exists()]
    return sorted(str(p.relative_to(run)) for p in bad)


def _error(err: str) -> str:
    """The one ``error:`` line (a run also logs and draws loading bars on stderr)."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _argv(base: list[str], *extra: str) -> list[str]:
    return ["distill", *base, "train.save_every=2", *extra, "--no-progress"]


def test_disk_full_while_checkpointing(base_overrides, tmp_path, monkeypatch, capsys):
    import attnkd.engine.checkpoint as ckpt

    def full(tensors, filename, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(ckpt, "save_file", full)  # the optimizer state, after the weights
    assert main(_argv(base_overrides)) == 2
    err = _error(capsys.readouterr().err)
    record("disk-full-checkpoint", "resources", "disk full while checkpointing (ENOSPC)",
           ["distill", "(write raises ENOSPC)"], err, tmp_path)  # fmt: skip
    assert err.startswith("error: no space left on the device writing ")
    assert "optimizer" in err and "continue with --resume" in err, err
    run = tmp_path / "runs" / "tiny"
    assert _partial(run) == []
    assert not (run / "checkpoints" / "last").exists()


def test_out_of_memory_names_the_predicted_peak(base_overrides, tmp_path, monkeypatch, capsys):
    import attnkd.distill as distill

    def make_step(*args, **kwargs):
        def step(batch):
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 68719476736 bytes. Error code 12"
            )

        return step

    monkeypatch.setattr(distill, "make_step", make_step)
    assert main(_argv(base_overrides)) == 2
    err = _error(capsys.readouterr().err)
    record("out-of-memory", "resources", "out of memory during training",
           ["distill", "(allocation fails)"], err, tmp_path)  # fmt: skip
    assert err.startswith("error: out of memory during the run; the predicted peak of a ")
    assert "iB" in err and "lower train.batch_size" in err
    assert _partial(tmp_path / "runs" / "tiny") == []


def test_a_bug_still_shows_its_traceback(base_overrides, monkeypatch):
    import attnkd.distill as distill

    def make_step(*args, **kwargs):
        def step(batch):
            raise RuntimeError("shape mismatch inside a loss")  # not the user's input

        return step

    monkeypatch.setattr(distill, "make_step", make_step)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(_argv(base_overrides))


def test_corrupt_checkpoint_on_resume(base_overrides, tmp_path, capsys):
    assert main(_argv(base_overrides, "train.max_steps=2")) == 0
    weights = tmp_path / "runs" / "tiny" / "checkpoints" / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    capsys.readouterr()
    assert main(_argv(base_overrides, "train.max_steps=4", "--resume")) == 2
    err = _error(capsys.readouterr().err)
    record("checkpoint-corrupt", "caches", "--resume when the only checkpoint is truncated",
           ["distill", "--resume"], err, tmp_path)  # fmt: skip
    assert err.startswith("error: checkpoint error in ") and "model.safetensors" in err, err
