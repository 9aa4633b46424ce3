"""Devices and precision in the engine: train.device resolution, batches following the module,
bf16/fp16 autocast (fp16 with a checkpointed gradient scaler), the deprecated train.bf16."""

from __future__ import annotations

import warnings
from collections import namedtuple

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

from attnkd.engine import StepOutput, fit, load_checkpoint, resolve_device, to_device
from attnkd.engine.device import check_train_settings, precision_of, teacher_dtype_of
from attnkd.errors import ConfigError

CUDA = torch.cuda.is_available()


def _run(tmp, c, resume=False, step_fn=None, model=None, **kw):
    model = model if model is not None else make_model()
    res = fit(c, model, step_fn or mse_step(model), make_batches(c.batch_size), tmp,
              resume=resume, progress=False, **kw)  # fmt: skip
    return model, res


# ------------------------------------------------------------------------------- devices


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert (
        resolve_device("auto").type == ("cuda" if CUDA else "cpu")
        or torch.backends.mps.is_available()
    )
    for bad in ("gpu", "cuda:x", "CPU", "", "cuda:-1"):
        with pytest.raises(ConfigError, match="train.device.*expected 'auto', 'cpu'"):
            resolve_device(bad)


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
def test_unavailable_cuda_is_a_config_error():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"'{spec}' asked for, but CUDA is not available"):
            resolve_device(spec)
    with pytest.raises(ConfigError, match="train.device"):
        check_train_settings(cfg(device="cuda"))


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS present")
def test_unavailable_mps_is_a_config_error():
    with pytest.raises(ConfigError, match="'mps' asked for, but Apple MPS is not available"):
        resolve_device("mps")


def test_to_device_moves_every_tensor_in_nested_batches():
    Pair = namedtuple("Pair", "x y")
    batch = {
        "a": torch.ones(2),
        "b": [torch.zeros(1), (torch.ones(1), 3)],
        "p": Pair(torch.ones(1), "s"),
    }
    moved = to_device(batch, torch.device("meta"))
    assert moved["a"].is_meta and moved["b"][0].is_meta and moved["b"][1][0].is_meta
    assert moved["b"][1][1] == 3 and isinstance(moved["b"][1], tuple)
    assert isinstance(moved["p"], Pair) and moved["p"].x.is_meta and moved["p"].y == "s"


def test_loop_moves_batches_to_the_modules_device(tmp_path):
    """A module on the meta device gets meta batches (device placement without a GPU)."""
    seen = []
    model = make_model()
    inner = mse_step(model)

    def step(batch):
        seen.append(batch[0].device)
        return inner(batch)

    _run(tmp_path, cfg(max_steps=2), step_fn=step, model=model)
    assert seen == [torch.device("cpu")] * 2


# ----------------------------------------------------------------------------- precision


def test_precision_settings():
    assert precision_of(cfg()) == "fp32"
    assert precision_of(cfg(precision="fp16")) == "fp16"
    with pytest.warns(DeprecationWarning, match="train.precision: bf16"):
        assert precision_of(cfg(bf16=True)) == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        precision_of(cfg(precision="half"))
    with pytest.raises(ConfigError, match="train.bf16.*conflicts"):
        check_train_settings(cfg(bf16=True, precision="fp16"))
    assert teacher_dtype_of(cfg(teacher_dtype="bf16")) == torch.bfloat16
    assert teacher_dtype_of(cfg()) is None
    with pytest.raises(ConfigError, match="train.teacher_dtype"):
        teacher_dtype_of(cfg(teacher_dtype="int8"))
    check_train_settings(cfg(device="cpu", precision="bf16", teacher_dtype="fp16"))


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_fit_on_cpu(tmp_path, precision, dtype):
    seen = []
    model = make_model()
    inner = mse_step(model)

    def step(batch):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        out = inner(batch)
        return StepOutput(out.loss.float(), out.terms, out.num_items)

    # fp16: the scaler starts at 2**16 and halves on each overflowing step, skipping it
    _, res = _run(tmp_path, cfg(max_steps=16, precision=precision), step_fn=step, model=model)
    assert seen == [dtype] * 16 and res.steps_done == 16 and res.skipped_steps == 0
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    start = make_model()
    assert not state_equal(start, model)  # it trained


def test_fp16_scaler_state_is_checkpointed_and_resume_is_exact(tmp_path):
    c = cfg(max_steps=8, precision="fp16", save_every=2)
    full, _ = _run(tmp_path / "full", c)
    import json

    doc = json.loads((tmp_path / "full" / "checkpoints" / "last" / "state.json").read_text())
    assert doc["scaler"]["scale"] > 0 and "_growth_tracker" in doc["scaler"]
    ck = load_checkpoint(tmp_path / "full" / "checkpoints" / "last", make_model())
    assert ck.scaler == doc["scaler"]

    model = make_model()
    step = interrupt_after(mse_step(model), 5)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", c, step_fn=step, model=model)
    resumed = make_model(seed=2)
    _run(tmp_path / "cut", c, resume=True, model=resumed)
    assert state_equal(full, resumed)


def test_fp32_has_no_scaler_state(tmp_path):
    import json

    _run(tmp_path, cfg(max_steps=1))
    doc = json.loads((tmp_path / "checkpoints" / "last" / "state.json").read_text())
    assert "scaler" not in doc


def test_deprecated_bf16_flag_still_autocasts(tmp_path):
    seen = []
    model = make_model()
    inner = mse_step(model)

    def step(batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return inner(batch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _run(tmp_path, cfg(max_steps=2, bf16=True), step_fn=step, model=model)
    assert seen == [True, True]


# ----------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_fit_moves_batches_and_resumes_exactly(tmp_path, precision):
    c = cfg(max_steps=8, grad_accum=2, precision=precision, save_every=2)
    seen = []

    def step_on(model):
        inner = mse_step(model)

        def step(batch):
            seen.append(batch[0].device.type)
            out = inner(batch)
            return StepOutput(out.loss.float(), out.terms, out.num_items)

        return step

    full = make_model().cuda()
    _run(tmp_path / "full", c, step_fn=step_on(full), model=full)
    assert set(seen) == {"cuda"}
    cut = make_model().cuda()
    step = interrupt_after(step_on(cut), 7)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", c, step_fn=step, model=cut)
    resumed = make_model(seed=9).cuda()
    _run(tmp_path / "cut", c, resume=True, step_fn=step_on(resumed), model=resumed)
    assert state_equal(full, resumed)
