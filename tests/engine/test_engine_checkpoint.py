"""Atomic safetensors checkpoints: round trip, no pickle, clear errors, interrupted saves."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from engine_helpers import Tiny, cfg, make_model, state_equal

import attnkd.atomic as atomic_mod
import attnkd.engine.checkpoint as ckpt_mod
from attnkd.engine import (
    CheckpointError,
    TrainState,
    build_optimizer,
    capture_rng,
    load_checkpoint,
    read_state,
    restore_rng,
    save_checkpoint,
)
from attnkd.errors import AttnkdError


def _trained(steps: int = 3):
    m = make_model()
    opt = build_optimizer(m, cfg())
    for _ in range(steps):
        loss = m(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return m, opt


def _save(path, m, opt, step=3, **kw):
    state = TrainState(step=step, best_metric=0.25, best_step=2, elapsed_s=1.5)
    return save_checkpoint(path, m, opt, state, capture_rng(), {"note": "x"}, **kw)


def test_round_trip_restores_weights_optimizer_counters_rng(tmp_path):
    m, opt = _trained()
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    _save(tmp_path / "last", m, opt)
    draws = (torch.rand(3), np.random.rand(3), random.random())

    m2 = make_model(seed=99)
    opt2 = build_optimizer(m2, cfg())
    assert not state_equal(m, m2)
    ck = load_checkpoint(tmp_path / "last", m2, opt2)
    assert state_equal(m, m2)
    assert ck.state == TrainState(step=3, best_metric=0.25, best_step=2, elapsed_s=1.5)
    assert ck.extra == {"note": "x"}

    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd["param_groups"] == sd2["param_groups"]
    assert isinstance(sd2["param_groups"][0]["betas"], tuple)
    assert sd["state"].keys() == sd2["state"].keys()
    for i in sd["state"]:
        assert sd["state"][i].keys() == sd2["state"][i].keys()
        for k, v in sd["state"][i].items():
            assert torch.equal(v, sd2["state"][i][k]), (i, k)

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng(ck.rng)
    assert torch.equal(torch.rand(3), draws[0])
    assert np.array_equal(np.random.rand(3), draws[1])
    assert random.random() == draws[2]


def test_files_are_safetensors_and_json_only(tmp_path):
    m, opt = _trained()
    d = _save(tmp_path / "last", m, opt)
    assert sorted(p.name for p in d.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    doc = json.loads((d / "state.json").read_text())
    assert set(doc["files"]) == {"model.safetensors", "optimizer.safetensors", "rng.safetensors"}
    from safetensors.torch import load_file

    keys = set(load_file(str(d / "optimizer.safetensors")))
    assert "state.0.exp_avg" in keys and "state.0.step" in keys
    assert read_state(d).step == 3
    # no temporary or old directories are left next to it
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_overwrite_replaces_previous(tmp_path):
    m, opt = _trained(1)
    _save(tmp_path / "last", m, opt, step=1)
    m, opt = _trained(4)
    _save(tmp_path / "last", m, opt, step=4)
    assert read_state(tmp_path / "last").step == 4
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_tied_weights_round_trip(tmp_path):
    def tied():
        s = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
        s[1].weight = s[0].weight
        return s

    a, b = tied(), tied()
    save_checkpoint(tmp_path / "c", a, None, TrainState())
    load_checkpoint(tmp_path / "c", b)
    assert torch.equal(a[0].weight, b[0].weight)
    assert b[0].weight is b[1].weight


def test_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory") as e:
        load_checkpoint(tmp_path / "nope", Tiny())
    assert isinstance(e.value, AttnkdError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"state\.json.*missing"):
        load_checkpoint(tmp_path / "empty", Tiny())


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "rng.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_file_is_named_and_module_untouched(tmp_path, name, damage):
    m, opt = _trained()
    d = _save(tmp_path / "last", m, opt)
    f = d / name
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        f.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        f.unlink()
    m2 = make_model(seed=5)
    before = {k: v.clone() for k, v in m2.state_dict().items()}
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(d, m2, build_optimizer(m2, cfg()))
    assert all(torch.equal(before[k], v) for k, v in m2.state_dict().items())


def test_corrupt_state_json(tmp_path):
    m, opt = _trained()
    d = _save(tmp_path / "last", m, opt)
    (d / "state.json").write_text('{"format": 1, "state": {"st')
    with pytest.raises(CheckpointError, match=r"state\.json: corrupt JSON"):
        load_checkpoint(d, Tiny())
    (d / "state.json").write_text('{"format": 1, "state": {"step": 3}}')
    with pytest.raises(CheckpointError, match=r"state\.json: incomplete"):
        load_checkpoint(d, Tiny())
    (d / "state.json").write_text('{"format": 99}')
    with pytest.raises(CheckpointError, match=r"state\.json: unknown checkpoint format"):
        load_checkpoint(d, Tiny())


def test_wrong_module_is_a_clear_error(tmp_path):
    m, opt = _trained()
    d = _save(tmp_path / "last", m, opt)
    other = torch.nn.Linear(4, 1)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*does not fit"):
        load_checkpoint(d, other)
    bigger = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors.*does not fit"):
        load_checkpoint(d, m, build_optimizer(bigger, cfg()))
    wider = Tiny(hidden=8)  # same groups and counts, other shapes
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors.*state\.0\.exp_avg"):
        load_checkpoint(d, m, build_optimizer(wider, cfg()))


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m, opt = _trained(1)
    _save(tmp_path / "last", m, opt, step=1)
    m4, opt4 = _trained(4)

    def boom(*a, **k):
        raise KeyboardInterrupt  # interrupted while writing the optimizer file

    monkeypatch.setattr(ckpt_mod, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "last", m4, opt4, step=4)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    m2 = make_model(seed=3)
    assert load_checkpoint(tmp_path / "last", m2).state.step == 1
    assert state_equal(m, m2)


def test_interrupted_between_renames_recovers_newest(tmp_path, monkeypatch):
    m, opt = _trained(1)
    _save(tmp_path / "last", m, opt, step=1)
    m4, opt4 = _trained(4)
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old moved away, new not yet moved in
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(atomic_mod.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "last", m4, opt4, step=4)
    monkeypatch.undo()
    assert not (tmp_path / "last").exists()
    m2 = make_model(seed=3)
    ck = load_checkpoint(tmp_path / "last", m2, build_optimizer(m2, cfg()))
    assert ck.state.step == 4 and state_equal(m4, m2)
    # the next save cleans the leftovers up
    _save(tmp_path / "last", m4, opt4, step=5)
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
