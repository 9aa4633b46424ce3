"""The training loop: exact resume, accumulation, best checkpoint, metrics, time budget."""

from __future__ import annotations

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

from attnkd.engine import Schedule, StepOutput, fit, load_checkpoint, read_metrics, read_state
from attnkd.errors import AttnkdError, ConfigError


def _run(tmp, c, resume=False, step_fn=None, model=None, progress=False, **kw):
    model = model if model is not None else make_model()
    res = fit(
        c,
        model,
        step_fn or mse_step(model),
        make_batches(c.batch_size),
        tmp,
        resume=resume,
        progress=progress,
        **kw,
    )
    return model, res


def _interrupt_after(model, n_micro: int):
    return interrupt_after(mse_step(model), n_micro)


class FakeClock:
    """Advances by ``per_call`` seconds on each micro-batch (driven by the step function)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("accum,n_micro", [(1, 5), (2, 7)])
def test_resume_after_ctrl_c_is_bitwise_exact(tmp_path, accum, n_micro):
    # 12 items-per-epoch batches -> several epochs; dropout makes RNG restore matter
    c = cfg(max_steps=14, grad_accum=accum, save_every=4)
    full, res_full = _run(tmp_path / "full", c)
    assert res_full.steps_done == 14

    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", c, step_fn=_interrupt_after(model, n_micro), model=model)
    done = n_micro // accum  # last completed optimizer step
    assert read_state(tmp_path / "cut" / "checkpoints" / "last").step == done

    resumed, res = _run(tmp_path / "cut", c, resume=True, model=make_model(seed=1234))
    assert res.steps_done == 14 and not res.stopped_early
    assert state_equal(full, resumed)

    # and the optimizer moments agree too
    a, b = make_model(), make_model()
    from attnkd.engine import build_optimizer

    oa, ob = build_optimizer(a, c), build_optimizer(b, c)
    load_checkpoint(tmp_path / "full" / "checkpoints" / "last", a, oa)
    load_checkpoint(tmp_path / "cut" / "checkpoints" / "last", b, ob)
    for i, s in oa.state_dict()["state"].items():
        for k, v in s.items():
            assert torch.equal(v, ob.state_dict()["state"][i][k])


def test_resume_is_needed_for_equality(tmp_path):
    """Sanity check that the comparison above can fail: a fresh restart does not match."""
    c = cfg(max_steps=6)
    full, _ = _run(tmp_path / "a", c)
    other, _ = _run(tmp_path / "b", cfg(max_steps=6, seed=1))
    assert not state_equal(full, other)


def test_time_budget_stops_cleanly_then_resume_matches(tmp_path):
    clock = FakeClock()
    c_full = cfg(max_steps=10, grad_accum=2)
    full, _ = _run(tmp_path / "full", c_full)

    def ticking(model):
        inner = mse_step(model)

        def step(batch):
            clock.t += 10.0  # each micro-batch takes 10 s
            return inner(batch)

        return step

    model = make_model()
    c = cfg(max_steps=10, grad_accum=2, max_minutes=1.0)  # 60 s = 3 steps of 2 x 10 s
    _, res = _run(tmp_path / "cut", c, step_fn=ticking(model), model=model, clock=clock)
    assert res.stopped_early and res.steps_done == 3
    st = read_state(tmp_path / "cut" / "checkpoints" / "last")
    assert st.step == 3 and st.elapsed_s == pytest.approx(60.0)
    stop = read_metrics(tmp_path / "cut", "stop")
    assert stop[-1]["stopped_early"] is True and stop[-1]["step"] == 3

    # resume twice more under the same budget, then compare with the uninterrupted run
    model = make_model()
    _, res = _run(tmp_path / "cut", c, True, step_fn=ticking(model), model=model, clock=clock)
    assert res.steps_done == 6 and res.stopped_early
    model = make_model()
    _, res = _run(tmp_path / "cut", c, True, step_fn=ticking(model), model=model, clock=clock)
    assert res.steps_done == 9 and res.stopped_early
    model = make_model()
    _, res = _run(tmp_path / "cut", c, True, step_fn=ticking(model), model=model, clock=clock)
    assert res.steps_done == 10 and not res.stopped_early
    assert state_equal(full, model)
    assert read_state(tmp_path / "cut" / "checkpoints" / "last").elapsed_s == pytest.approx(200.0)


# ------------------------------------------------------------------------ accumulation, clip


def test_grad_accumulation_matches_big_batch(tmp_path):
    def run(bs, accum, name):
        model = make_model(dropout=0.0)
        c = cfg(max_steps=6, batch_size=bs, grad_accum=accum, clip_norm=0.5)
        b = make_batches(bs, shuffle=False)
        fit(c, model, mse_step(model), b, tmp_path / name, progress=False)
        return model

    big = run(8, 1, "big")
    acc = run(4, 2, "acc")
    small = run(4, 1, "small")  # same steps, half the data: must differ
    for (k, v), w in zip(big.state_dict().items(), acc.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)
    assert not all(
        torch.allclose(v, w, atol=1e-4)
        for v, w in zip(big.state_dict().values(), small.state_dict().values())
    )


def test_logged_grad_norm_and_first_update_match_naive(tmp_path):
    """Step 1 by hand: gradient norm before clipping, clip, AdamW with decoupled decay."""
    c = cfg(max_steps=1, log_every=1, clip_norm=0.1, weight_decay=0.1, warmup_ratio=0.0)
    model = make_model(dropout=0.0)
    ref = make_model(dropout=0.0)
    x, y = make_batches(4).batch_at(0, 0)
    loss = ((ref(x) - y) ** 2).mean()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()

    evals = []
    _run(tmp_path, c, model=model, evaluate=lambda: evals.append(1) or {})
    ev = read_metrics(tmp_path, "train")[0]
    assert ev["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert ev["lr"] == pytest.approx(1e-2)  # no warmup, first step at the peak
    # first AdamW step: bias-corrected m / sqrt(v) = g / |g|; decay skips 1-D parameters
    lr, scale = 1e-2, min(1.0, 0.1 / (norm + 1e-6))
    got = dict(model.named_parameters())
    for (name, p), g in zip(ref.named_parameters(), grads):
        wd = 0.0 if p.ndim < 2 else 0.1
        g = g * scale
        expect = p.detach() * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(got[name].detach(), expect, rtol=1e-4, atol=1e-6, msg=name)
    assert evals == [1]  # evaluated once, at the end


# -------------------------------------------------------------------------- best checkpoint


@pytest.mark.parametrize("mode,best_step,best", [("max", 4, 0.9), ("min", 6, 0.1)])
def test_best_checkpoint_follows_metric(tmp_path, mode, best_step, best):
    scores = iter([0.3, 0.9, 0.1, 0.5])  # evaluated at steps 2, 4, 6 and 8
    model = make_model()
    snapshots = {}

    def evaluate():
        assert not model.training  # eval mode during evaluation
        snapshots[len(snapshots)] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"score": next(scores), "other": 1.0}

    c = cfg(max_steps=8, eval_every=2)
    _, res = _run(
        tmp_path, c, model=model, evaluate=evaluate, select_metric="score", select_mode=mode
    )
    assert model.training  # training mode restored
    assert (res.best_step, res.best_metric) == (best_step, best)
    assert res.final_metrics == {"score": 0.5, "other": 1.0}
    best_dir = tmp_path / "checkpoints" / "best"
    m = make_model(seed=5)
    ck = load_checkpoint(best_dir, m)  # weights only, no optimizer or RNG files
    assert ck.extra == {"metric": "score", "value": best, "step": best_step}
    assert sorted(p.name for p in best_dir.iterdir()) == ["model.safetensors", "state.json"]
    want = snapshots[best_step // 2 - 1]
    assert all(torch.equal(v, want[k]) for k, v in m.state_dict().items())
    assert read_state(tmp_path / "checkpoints" / "last").best_step == best_step


def test_eval_at_start_keeps_initial_weights_when_training_only_hurts(tmp_path):
    scores = iter([0.8, 0.3, 0.5])  # evaluated at steps 0, 2 and 4
    model = make_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    c = cfg(max_steps=4, eval_every=2, eval_at_start=True)
    _, res = _run(
        tmp_path, c, model=model, evaluate=lambda: {"score": next(scores)}, select_metric="score"
    )
    assert (res.best_step, res.best_metric) == (0, 0.8)
    m = make_model(seed=5)
    load_checkpoint(tmp_path / "checkpoints" / "best", m)
    assert all(torch.equal(v, start[k]) for k, v in m.state_dict().items())
    assert not all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_evaluation_does_not_disturb_training(tmp_path):
    def noisy_eval():
        torch.rand(100)  # an evaluation that draws random numbers
        return {"x": 0.0}

    a, _ = _run(tmp_path / "a", cfg(max_steps=6, eval_every=2), evaluate=noisy_eval)
    b, _ = _run(tmp_path / "b", cfg(max_steps=6))
    assert state_equal(a, b)


def test_select_metric_errors(tmp_path):
    with pytest.raises(ConfigError):
        _run(tmp_path, cfg(), select_metric="score")
    with pytest.raises(AttnkdError, match="no 'score'"):
        _run(
            tmp_path,
            cfg(max_steps=2, eval_every=1),
            evaluate=lambda: {"s": 1.0},
            select_metric="score",
        )


# -------------------------------------------------------------------------------- metrics


def test_metrics_jsonl_contents(tmp_path):
    record = []
    model = make_model()
    c = cfg(max_steps=6, grad_accum=2, log_every=2, eval_every=3, lr=0.02, warmup_ratio=0.5)
    _run(tmp_path, c, model=model, step_fn=mse_step(model, record), evaluate=lambda: {"acc": 0.5})
    rows = read_metrics(tmp_path)
    assert [r["event"] for r in rows] == [
        "start",
        "train",
        "eval",
        "train",
        "train",
        "eval",
        "stop",
    ]
    train = read_metrics(tmp_path, "train")
    assert [r["step"] for r in train] == [2, 4, 6]
    sched = Schedule(6, 3)
    for r, step in zip(train, (2, 4, 6)):
        assert set(r) == {
            "event",
            "step",
            "epoch",
            "lr",
            "loss",
            "terms",
            "grad_norm",
            "items_per_s",
            "elapsed_s",
        }
        assert r["lr"] == pytest.approx(0.02 * sched.factor(step - 1))
        micro = record[(step - 2) * 2 : step * 2]  # 2 steps x 2 micro-batches
        assert r["loss"] == pytest.approx(sum(m["mse"] for m in micro) / 4, rel=1e-6)
        assert r["terms"]["mae"] == pytest.approx(sum(m["mae"] for m in micro) / 4)
        assert r["grad_norm"] > 0 and r["items_per_s"] > 0
        assert r["epoch"] == pytest.approx(step * 2 / 12)  # 48 items / batch 4
    assert [e["step"] for e in read_metrics(tmp_path, "eval")] == [3, 6]
    assert read_metrics(tmp_path, "eval")[0]["metrics"] == {"acc": 0.5}
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_metrics_appended_on_resume(tmp_path):
    model = make_model()
    c = cfg(max_steps=6, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, c, step_fn=_interrupt_after(model, 3), model=model)
    _run(tmp_path, c, resume=True)
    rows = read_metrics(tmp_path)
    kinds = [r["event"] for r in rows]
    assert kinds[0] == "start" and "interrupted" in kinds and "resume" in kinds
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    with pytest.warns(UserWarning, match=r"changed settings \['lr'\]"):
        _run(tmp_path, cfg(max_steps=6, log_every=1, lr=0.5), resume=True)
    with pytest.warns(UserWarning, match="starting afresh"):
        _run(tmp_path, cfg(max_steps=2, log_every=1))
    assert [r["event"] for r in read_metrics(tmp_path)] == ["start", "train", "train", "stop"]


def test_bf16_autocast_and_bad_loss(tmp_path):
    seen = []
    model = make_model()
    inner = mse_step(model)

    def step(batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return inner(batch)

    _run(
        tmp_path / "a", cfg(max_steps=2, precision="bf16"), step_fn=step, model=model, progress=True
    )
    assert seen == [True, True]
    with pytest.raises(AttnkdError, match="differentiable"):
        _run(tmp_path / "b", cfg(max_steps=1), step_fn=lambda b: StepOutput(torch.tensor(1.0), {}))
    with pytest.raises(ConfigError):
        _run(tmp_path / "c", cfg(grad_accum=0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_exact_on_cuda_with_bf16(tmp_path):
    def cuda_step(model):
        def step(batch):
            x, y = (t.cuda() for t in batch)
            loss = ((model(x).float() - y) ** 2).mean()
            return StepOutput(loss, {"mse": loss.item()}, len(x))

        return step

    c = cfg(max_steps=8, grad_accum=2, precision="bf16")
    full = make_model().cuda()
    _run(tmp_path / "full", c, step_fn=cuda_step(full), model=full)
    cut = make_model().cuda()
    step = interrupt_after(cuda_step(cut), 7)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", c, step_fn=step, model=cut)
    resumed = make_model(seed=9).cuda()
    _run(tmp_path / "cut", c, resume=True, step_fn=cuda_step(resumed), model=resumed)
    assert state_equal(full, resumed)
