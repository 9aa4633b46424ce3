"""The one training loop: accumulate, clip, step, schedule, log, evaluate, checkpoint, resume.

Reads top to bottom. One optimizer step = ``cfg.grad_accum`` micro-batches, each
``step_fn(batch) -> StepOutput`` under optional bf16 autocast, backward of ``loss / grad_accum``
(so equal-sized micro-batches give the gradient of the mean over the whole step). The teacher
lives in ``step_fn``'s closure, outside ``module``: the optimizer and checkpoints see only
``module``.

Resume is exact: weights, optimizer, every RNG and the batch position (a pure function of the
step count, see :mod:`attnkd.engine.batches`) are restored from ``checkpoints/last/``, so a
resumed run ends with bitwise the same weights as an uninterrupted one (same device and
library versions). Evaluation runs with forked RNGs and never perturbs training.

Many processes (torchrun): the same loop runs on every rank; the lines marked ``# dist:`` call
:mod:`attnkd.engine.distributed` (rank 0 writes, logged values are averaged over ranks,
checkpoints are gathered to the single-process format, ranks agree on when to stop). ``module``
is the unwrapped module under DDP (``step_fn`` calls the DDP wrapper) or the module FSDP2
sharded in place; ``batches`` yields this rank's rows.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnkd.config.schema import TrainConfig
from attnkd.engine import distributed
from attnkd.engine.batches import ResumableBatches, position
from attnkd.engine.checkpoint import TrainState
from attnkd.engine.dist_checkpoint import load_checkpoint, save_checkpoint
from attnkd.engine.metrics import MetricsWriter, ProgressBar
from attnkd.engine.optim import build_optimizer
from attnkd.engine.rng import RngState, capture_rng, fork_rng, restore_rng, seed_everything
from attnkd.engine.schedule import Schedule
from attnkd.errors import AttnkdError, ConfigError


@dataclass
class StepOutput:
    """What ``step_fn`` returns for one micro-batch."""

    loss: torch.Tensor
    """Scalar, differentiable, the already weighted total."""
    terms: dict[str, float] = field(default_factory=dict)
    """Each loss term's value, logged on its own (e.g. ``{"relation_qq": 0.12}``)."""
    num_items: int = 0
    """Sentences/tokens processed, for throughput."""


@dataclass
class FitResult:
    """What :func:`fit` reports when it returns (normally or at the time budget)."""

    steps_done: int
    """Optimizer steps completed in total (over all sessions of this run)."""
    best_metric: float | None
    best_step: int | None
    final_metrics: dict[str, float]
    stopped_early: bool
    """True when the ``cfg.max_minutes`` budget stopped training before ``cfg.max_steps``."""
    run_dir: Path


@dataclass
class _Window:
    """Running sums between two log events."""

    steps: int = 0
    loss: float | torch.Tensor = 0.0  # summed on device, read once per log event
    grad_norm: float | torch.Tensor = 0.0
    items: int = 0
    terms: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0


def _validate(cfg: TrainConfig, select_mode: str) -> None:
    if cfg.max_steps < 1:
        raise ConfigError("train.max_steps", f"must be >= 1, got {cfg.max_steps}")
    if cfg.grad_accum < 1:
        raise ConfigError("train.grad_accum", f"must be >= 1, got {cfg.grad_accum}")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise ConfigError("train.max_minutes", f"must be > 0 or null, got {cfg.max_minutes}")
    if select_mode not in ("max", "min"):
        raise ConfigError("select_mode", f"must be 'max' or 'min', got '{select_mode}'")


def _device_type(module: nn.Module) -> str:
    for p in module.parameters():
        return p.device.type
    raise ConfigError("module", "has no parameters")


def _improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def fit(
    cfg: TrainConfig,
    module: nn.Module,
    step_fn: Callable[[Any], StepOutput],
    batches: ResumableBatches,
    run_dir: str | Path,
    evaluate: Callable[[], dict[str, float]] | None = None,
    select_metric: str | None = None,
    resume: bool = False,
    progress: bool = True,
    *,
    select_mode: str = "max",
    decay: str = "linear",
    clock: Callable[[], float] = time.monotonic,
) -> FitResult:
    """Train ``module`` for ``cfg.max_steps`` optimizer steps; see the module docstring.

    Writes ``run_dir/metrics.jsonl``, ``run_dir/tb/`` (if tensorboard is installed),
    ``run_dir/checkpoints/last/`` (every ``cfg.save_every`` steps, at the end, on a time-budget
    stop and on Ctrl-C) and ``run_dir/checkpoints/best/`` (weights with the best
    ``evaluate()[select_metric]``; ``select_mode`` 'max' or 'min'). ``decay`` is the schedule's
    decay after warmup ('linear', 'cosine', 'constant'). ``clock`` gives seconds (tests fake it).
    The ``cfg.max_minutes`` budget counts this session only; at least one step runs per session.
    """
    _validate(cfg, select_mode)
    if select_metric is not None and evaluate is None:
        raise ConfigError("select_metric", "needs an evaluate function")
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    device_type = _device_type(module)
    schedule = Schedule.from_config(cfg, decay)
    optimizer = build_optimizer(module, cfg)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    extra = {"train": asdict(cfg), "num_batches": batches.num_batches}
    ctx, sharded = distributed.current(), distributed.is_sharded(module)  # dist: who am I

    state = TrainState()
    if resume:
        ckpt = load_checkpoint(ckpt_dir / "last", module, optimizer)
        state = ckpt.state
        if ckpt.rng is not None:
            restore_rng(ckpt.rng)
        _warn_changes(ckpt.extra, extra)
    else:
        if (ckpt_dir / "last").exists():
            warnings.warn(
                f"starting afresh in {run_dir}, which holds a checkpoint (resume=True continues "
                "it); its checkpoints will be overwritten and metrics.jsonl restarted",
                stacklevel=2,
            )
        seed_everything(cfg.seed)

    # dist: only rank 0 writes metrics and shows progress
    writer = (
        MetricsWriter(run_dir, resume=resume, start_step=state.step)
        if ctx.is_main
        else distributed.NullWriter()
    )
    bar = ProgressBar(cfg.max_steps, state.step, enabled=progress and ctx.is_main)
    writer.log({"event": "resume" if resume else "start", "step": state.step, "train": asdict(cfg)})

    t_start = clock()
    elapsed_before = state.elapsed_s
    rng_at_step: RngState = capture_rng()  # generators as they were after the last full step
    in_update = False
    lr = optimizer.param_groups[0]["lr"]
    stopped_early = False
    final_metrics: dict[str, float] = {}
    last_eval_step: int | None = None
    last_save_step: int | None = None
    window = _Window(t0=t_start)
    was_training = module.training
    module.train()

    def elapsed() -> float:
        return elapsed_before + clock() - t_start

    def save_last() -> None:
        nonlocal last_save_step
        state.elapsed_s = elapsed()
        save_checkpoint(ckpt_dir / "last", module, optimizer, state, rng_at_step, extra)
        last_save_step = state.step

    def run_eval() -> dict[str, float]:
        nonlocal last_eval_step, last_save_step
        module.eval()
        with fork_rng(), torch.no_grad():
            metrics = distributed.evaluate_on_ranks(evaluate, sharded)  # dist: same on all
        module.train()
        last_eval_step = state.step
        writer.log(
            {"event": "eval", "step": state.step, "metrics": metrics, "elapsed_s": elapsed()}
        )
        if select_metric is not None:
            if select_metric not in metrics:
                raise AttnkdError(
                    f"evaluate() returned no '{select_metric}' (got {sorted(metrics)}); "
                    "it is needed to select the best checkpoint"
                )
            if _improved(metrics[select_metric], state.best_metric, select_mode):
                state.best_metric, state.best_step = metrics[select_metric], state.step
                best = {"metric": select_metric, "value": state.best_metric, "step": state.step}
                save_checkpoint(ckpt_dir / "best", module, None, replace(state), extra=best)
                last_save_step = None  # last/ must record the new best
        return metrics

    try:
        if evaluate is not None and cfg.eval_at_start and state.step == 0:
            final_metrics = run_eval()
        while state.step < cfg.max_steps:
            # --- forward/backward over grad_accum micro-batches
            for j in range(cfg.grad_accum):
                epoch, index = position(state.step * cfg.grad_accum + j, batches.num_batches)
                batch = batches.batch_at(epoch, index)
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    out = step_fn(batch)
                if not (isinstance(out.loss, torch.Tensor) and out.loss.requires_grad):
                    raise AttnkdError("step_fn must return a differentiable scalar tensor as loss")
                (out.loss / cfg.grad_accum).backward()
                window.loss += out.loss.detach().float() / cfg.grad_accum
                for name, value in out.terms.items():
                    window.terms[name] = window.terms.get(name, 0.0) + float(value) / cfg.grad_accum
                window.items += out.num_items

            # --- update (weights are inconsistent only inside this block)
            in_update = True
            max_norm = cfg.clip_norm if cfg.clip_norm and cfg.clip_norm > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            lr = schedule.apply(optimizer, state.step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            rng_at_step = capture_rng()
            in_update = False
            window.steps += 1
            window.grad_norm += distributed.local_value(grad_norm).detach().float()  # dist

            # --- log, evaluate, save
            bar.update(1)
            if cfg.log_every > 0 and state.step % cfg.log_every == 0:
                _log_window(writer, bar, window, state.step, lr, batches, cfg, clock(), elapsed())
                window = _Window(t0=clock())
            if evaluate is not None and cfg.eval_every > 0 and state.step % cfg.eval_every == 0:
                final_metrics = run_eval()
            if cfg.save_every > 0 and state.step % cfg.save_every == 0:
                save_last()
            over_budget = cfg.max_minutes is not None and clock() - t_start >= 60 * cfg.max_minutes
            if cfg.max_minutes is not None:
                over_budget = distributed.any_rank(over_budget)  # dist: all stop together
            if over_budget and state.step < cfg.max_steps:
                stopped_early = True
                break

        if window.steps:
            _log_window(writer, bar, window, state.step, lr, batches, cfg, clock(), elapsed())
        if evaluate is not None and last_eval_step != state.step:
            final_metrics = run_eval()
        if last_save_step != state.step:  # not already saved with this step's state
            save_last()
        writer.log(
            {
                "event": "stop",
                "step": state.step,
                "stopped_early": stopped_early,
                "elapsed_s": elapsed(),
            }
        )
    except KeyboardInterrupt:
        # Save the last completed step so --resume continues; weights are half-updated only
        # if the interrupt hit the update itself, and then the previous checkpoint stays.
        optimizer.zero_grad(set_to_none=True)
        saved = not in_update and not ctx.is_distributed  # dist: a save would need every rank
        if saved:
            save_last()
        writer.log({"event": "interrupted", "step": state.step, "saved": saved})
        raise
    finally:
        bar.close()
        writer.close()
        module.train(was_training)

    return FitResult(
        steps_done=state.step,
        best_metric=state.best_metric,
        best_step=state.best_step,
        final_metrics=final_metrics,
        stopped_early=stopped_early,
        run_dir=run_dir,
    )


def _log_window(
    writer: MetricsWriter,
    bar: ProgressBar,
    w: _Window,
    step: int,
    lr: float,
    batches: ResumableBatches,
    cfg: TrainConfig,
    now: float,
    elapsed_s: float,
) -> None:
    # dist: loss and terms averaged over ranks, items summed (identity in one process)
    names = sorted(w.terms)
    loss, *terms = distributed.mean_over_ranks([float(w.loss), *(w.terms[k] for k in names)])
    items = distributed.sum_over_ranks(w.items)
    loss /= w.steps
    if not math.isfinite(loss):
        raise AttnkdError(f"loss is not finite ({loss}) around step {step}; lower train.lr?")
    dt = now - w.t0
    items_per_s = items / dt if dt > 0 else 0.0
    event = {
        "event": "train",
        "step": step,
        "epoch": step * cfg.grad_accum / batches.num_batches,
        "lr": lr,
        "loss": loss,
        "terms": {k: v / w.steps for k, v in zip(names, terms, strict=True)},
        "grad_norm": float(w.grad_norm) / w.steps,
        "items_per_s": items_per_s,
        "elapsed_s": elapsed_s,
    }
    writer.log(event)
    bar.show(loss, items_per_s)


def _warn_changes(saved: dict[str, Any], now: dict[str, Any]) -> None:
    changed = [
        k for k in now["train"] if saved.get("train", {}).get(k, now["train"][k]) != now["train"][k]
    ]
    if saved.get("num_batches", now["num_batches"]) != now["num_batches"]:
        changed.append("num_batches (dataset or batch size)")
    if changed:
        warnings.warn(
            f"resuming with changed settings {changed}; the run will not match an "
            "uninterrupted one",
            stacklevel=3,
        )
