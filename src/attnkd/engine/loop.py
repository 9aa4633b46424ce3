"""The one training loop: accumulate, clip, step, schedule, log, evaluate, checkpoint, resume.

Reads top to bottom. One optimizer step = ``cfg.grad_accum`` micro-batches, each moved to the
module's device and passed to ``step_fn(batch) -> StepOutput`` under autocast when
``cfg.precision`` is 'bf16' or 'fp16' (fp16 scales the loss with a ``GradScaler``), then
backward of ``loss / grad_accum`` (equal-sized micro-batches give the gradient of the mean over
the whole step). The teacher lives in ``step_fn``'s closure, outside ``module``: the optimizer
and checkpoints see only ``module``.

Faults:
- every step checks the loss and the gradient norm (one device sync); a non-finite value aborts
  with an error naming the loss terms and the batch, or with ``cfg.nonfinite == "skip"`` the
  step's update is dropped (gradients zeroed, no optimizer step) and counted;
- step checkpoints ``checkpoints/step-XXXXXXXX/`` (the newest ``cfg.keep_checkpoints``, with
  ``checkpoints/last`` pointing at the newest) are written atomically; resume takes the newest
  valid one and skips a corrupt one with a warning (:mod:`attnkd.engine.resume`);
- Ctrl-C saves the last completed step and re-raises; SIGTERM finishes the step, saves and
  raises :class:`~attnkd.engine.signals.Terminated` (exit status 143 from the CLI).

Resume is exact: weights, optimizer, gradient scaler, every RNG and the batch position (a pure
function of the step count, see :mod:`attnkd.engine.batches`) are restored, so a resumed run ends
with bitwise the same weights as an uninterrupted one (same device and library versions).
Evaluation runs with forked RNGs and never perturbs training.

Many processes (torchrun): the same loop runs on every rank; the lines marked ``# dist:`` call
:mod:`attnkd.engine.distributed` (rank 0 writes, logged values are averaged over ranks,
checkpoints are gathered to the single-process format, ranks take every stop/skip decision
together). ``module`` is the unwrapped module under DDP (``step_fn`` calls the DDP wrapper) or
the module FSDP2 sharded in place; ``batches`` yields this rank's rows.
"""

from __future__ import annotations

import logging
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
from attnkd.engine import resume as store
from attnkd.engine.batches import ResumableBatches, position
from attnkd.engine.checkpoint import CheckpointError, TrainState
from attnkd.engine.device import (
    NONFINITE_MODES,
    autocast_dtype,
    module_device,
    precision_of,
    to_device,
)
from attnkd.engine.dist_checkpoint import load_checkpoint, save_checkpoint
from attnkd.engine.metrics import METRICS_FILE, MetricsWriter, ProgressBar
from attnkd.engine.nonfinite import MicroBatch, NonFiniteError, nonfinite_problem
from attnkd.engine.optim import build_optimizer
from attnkd.engine.rng import RngState, capture_rng, fork_rng, restore_rng, seed_everything
from attnkd.engine.schedule import Schedule
from attnkd.engine.signals import Terminated, catch_sigterm
from attnkd.errors import AttnkdError, ConfigError

log = logging.getLogger("attnkd")


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
    resumed_from: Path | None = None
    """The checkpoint this session continued from (None for a fresh start)."""
    skipped_steps: int = 0
    """Steps whose update was dropped for a non-finite loss or gradient (over all sessions)."""


@dataclass
class _Window:
    """Running sums between two log events."""

    steps: int = 0
    loss: float | torch.Tensor = 0.0  # summed on device, read once per log event
    grad_norm: float | torch.Tensor = 0.0
    items: int = 0
    skipped: int = 0
    terms: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, terms: list[dict]) -> None:
        """One applied step: its loss, gradient norm and its micro-batches' term values."""
        self.steps += 1
        self.loss += loss
        self.grad_norm += grad_norm
        for micro in terms:
            for name, value in micro.items():
                self.terms[name] = self.terms.get(name, 0.0) + float(value) / len(terms)


def _validate(cfg: TrainConfig, select_mode: str) -> None:
    if cfg.max_steps < 1:
        raise ConfigError("train.max_steps", f"must be >= 1, got {cfg.max_steps}")
    if cfg.grad_accum < 1:
        raise ConfigError("train.grad_accum", f"must be >= 1, got {cfg.grad_accum}")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise ConfigError("train.max_minutes", f"must be > 0 or null, got {cfg.max_minutes}")
    if cfg.nonfinite not in NONFINITE_MODES:
        raise ConfigError("train.nonfinite", f"expected 'abort' or 'skip', got {cfg.nonfinite!r}")
    if cfg.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints", f"must be >= 1, got {cfg.keep_checkpoints}")
    if select_mode not in ("max", "min"):
        raise ConfigError("select_mode", f"must be 'max' or 'min', got '{select_mode}'")


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

    ``module`` must already be on its device (batches follow it). Writes
    ``run_dir/metrics.jsonl``, ``run_dir/tb/`` (if tensorboard is installed), step checkpoints
    (every ``cfg.save_every`` steps, at the end, on a time-budget stop, on Ctrl-C and SIGTERM)
    and ``run_dir/checkpoints/best/`` (weights with the best ``evaluate()[select_metric]``;
    ``select_mode`` 'max' or 'min'). A fresh start (``resume=False``) removes the checkpoints of
    an earlier run in ``run_dir`` first. ``decay`` is the schedule's decay after warmup
    ('linear', 'cosine', 'constant'). ``clock`` gives seconds (tests fake it). The
    ``cfg.max_minutes`` budget counts this session only; at least one step runs per session.
    """
    _validate(cfg, select_mode)
    if select_metric is not None and evaluate is None:
        raise ConfigError("select_metric", "needs an evaluate function")
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    device = module_device(module)
    amp_dtype = autocast_dtype(precision_of(cfg))
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    schedule = Schedule.from_config(cfg, decay)
    optimizer = build_optimizer(module, cfg)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    extra = {"train": asdict(cfg), "num_batches": batches.num_batches}
    ctx, sharded = distributed.current(), distributed.is_sharded(module)  # dist: who am I

    state = TrainState()
    resumed_from: Path | None = None
    point = store.find_resumable(ckpt_dir) if resume else None
    if resume and point is None:
        if not (run_dir / METRICS_FILE).is_file():  # no run ever started here
            raise CheckpointError(ckpt_dir, "no checkpoint to resume (this run never started)")
        # it started but was stopped before its first save: its start is step 0
        warnings.warn(f"no checkpoint in {ckpt_dir} to resume; starting at step 0", stacklevel=2)
        if ctx.is_main:  # dist: rank 0 alone touches the run folder
            store.clear(ckpt_dir)  # leftovers of a save that was cut short
        resume = False
    if point is not None:
        ckpt = load_checkpoint(point.path, module, optimizer)
        state, resumed_from = ckpt.state, point.path
        if ckpt.rng is not None:
            restore_rng(ckpt.rng)
        if scaler is not None and ckpt.scaler is not None:
            scaler.load_state_dict(ckpt.scaler)
        _warn_changes(ckpt.extra, extra)
        distributed.barrier()  # dist: every rank has read the checkpoint
        if ctx.is_main:
            store.remove_leftovers(ckpt_dir)
        log.info("resuming from %s (step %d)", point.path, state.step)
    else:
        if store.has_checkpoints(ckpt_dir):
            warnings.warn(
                f"starting afresh in {run_dir}, which holds checkpoints (resume=True continues "
                "them); they are removed and metrics.jsonl restarted",
                stacklevel=2,
            )
            if ctx.is_main:  # dist
                store.clear(ckpt_dir)
        seed_everything(cfg.seed)

    # dist: only rank 0 writes metrics and shows progress
    writer = (
        MetricsWriter(run_dir, resume=resume, start_step=state.step)
        if ctx.is_main
        else distributed.NullWriter()
    )
    bar = ProgressBar(cfg.max_steps, state.step, enabled=progress and ctx.is_main)
    begin: dict[str, Any] = {"event": "resume" if resume else "start", "step": state.step}
    if resumed_from is not None:
        begin["checkpoint"] = resumed_from.name
    writer.log({**begin, "train": asdict(cfg)})

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

    def save_last() -> Path:
        nonlocal last_save_step
        state.elapsed_s = elapsed()
        scaler_state = scaler.state_dict() if scaler is not None else None
        path = ckpt_dir / store.step_name(state.step)
        # dist: every rank calls it (FSDP2 gathers); rank 0 writes
        save_checkpoint(path, module, optimizer, state, rng_at_step, extra, scaler_state)
        if ctx.is_main:
            store.point_last(ckpt_dir, path)
            store.prune(ckpt_dir, cfg.keep_checkpoints)
        last_save_step = state.step
        return path

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
                save_checkpoint(ckpt_dir / store.BEST, module, None, replace(state), extra=best)
                last_save_step = None  # the step checkpoint must record the new best
        return metrics

    sigterm = catch_sigterm()
    try:
        if evaluate is not None and cfg.eval_at_start and state.step == 0:
            final_metrics = run_eval()
        while state.step < cfg.max_steps:
            # --- forward/backward over grad_accum micro-batches
            micro: list[MicroBatch] = []
            step_loss = torch.zeros((), device=device)
            for j in range(cfg.grad_accum):
                epoch, index = position(state.step * cfg.grad_accum + j, batches.num_batches)
                batch = to_device(batches.batch_at(epoch, index), device)
                with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
                    out = step_fn(batch)
                if not (isinstance(out.loss, torch.Tensor) and out.loss.requires_grad):
                    raise AttnkdError("step_fn must return a differentiable scalar tensor as loss")
                loss = out.loss / cfg.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
                loss = loss.detach().float()
                step_loss += loss
                micro.append(MicroBatch(epoch, index, torch.isfinite(loss), out.terms))
                window.items += out.num_items

            # --- check: one device sync per step
            if scaler is not None:
                scaler.unscale_(optimizer)  # true gradients for the norm and the clip
            max_norm = cfg.clip_norm if cfg.clip_norm and cfg.clip_norm > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            grad_norm = distributed.local_value(grad_norm).detach().float()  # dist: FSDP2 DTensor
            problem = nonfinite_problem(micro, grad_norm, state.step + 1, check_grad=scaler is None)
            problem = distributed.same_problem(problem)  # dist: all skip or abort together
            if problem is not None and cfg.nonfinite == "abort":
                writer.log({"event": "nonfinite", "step": state.step + 1, "action": "abort"})
                raise NonFiniteError(
                    f"{problem}; the last checkpoint is intact. Lower train.lr, check the data, "
                    "or set train.nonfinite: skip to drop such steps"
                )
            if problem is not None:  # skip: drop the update; batches and step number move on
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.update()  # unscale_ ran; the scaler must close its step
                state.step += 1
                state.skipped_steps += 1
                rng_at_step = capture_rng()
                window.skipped += 1
                log.warning("skipped step %d: %s", state.step, problem)
                event = {"event": "nonfinite", "step": state.step, "action": "skip"}
                writer.log({**event, "problem": problem, "skipped_steps": state.skipped_steps})
            else:
                # --- update (weights are inconsistent only inside this block)
                in_update = True
                lr = schedule.apply(optimizer, state.step)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                rng_at_step = capture_rng()
                in_update = False
                window.add(step_loss, grad_norm, [m.terms for m in micro])

            # --- log, evaluate, save, stop on request
            bar.update(1)
            if cfg.log_every > 0 and state.step % cfg.log_every == 0 and window.steps:
                _log_window(writer, bar, window, state.step, lr, batches, cfg, clock(),
                            elapsed())  # fmt: skip
                window = _Window(t0=clock())
            if evaluate is not None and cfg.eval_every > 0 and state.step % cfg.eval_every == 0:
                final_metrics = run_eval()
            if cfg.save_every > 0 and state.step % cfg.save_every == 0:
                save_last()
            over_budget = cfg.max_minutes is not None and clock() - t_start >= 60 * cfg.max_minutes
            # dist: every rank stops at the same step (one tiny all-reduce with many ranks)
            terminate, over_budget = distributed.any_rank(sigterm.requested, over_budget)
            if terminate:
                saved = ckpt_dir / store.step_name(state.step)
                if last_save_step != state.step:
                    save_last()
                writer.log({"event": "terminated", "step": state.step, "saved": saved.name})
                log.warning("SIGTERM: saved step %d to %s; stopping", state.step, saved)
                raise Terminated(state.step, saved)
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
                "skipped_steps": state.skipped_steps,
                "elapsed_s": elapsed(),
            }
        )
    except KeyboardInterrupt:
        # Save the last completed step so --resume continues; weights are half-updated only
        # if the interrupt hit the update itself, and then the previous checkpoint stays.
        optimizer.zero_grad(set_to_none=True)
        saved = not in_update and not ctx.is_distributed  # dist: a save would need every rank
        if saved and last_save_step != state.step:
            save_last()
        writer.log({"event": "interrupted", "step": state.step, "saved": saved})
        raise
    finally:
        sigterm.restore()
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
        resumed_from=resumed_from,
        skipped_steps=state.skipped_steps,
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
    # dist: loss, terms and gradient norm averaged over ranks, items summed (identity in one
    # process); every rank calls this at the same steps
    names = sorted(w.terms)
    values = [float(w.loss), float(w.grad_norm), *(w.terms[k] for k in names)]
    loss, grad_norm, *terms = distributed.mean_over_ranks(values)
    loss /= w.steps
    items = distributed.sum_over_ranks(w.items)
    dt = now - w.t0
    items_per_s = items / dt if dt > 0 else 0.0
    event = {
        "event": "train",
        "step": step,
        "epoch": step * cfg.grad_accum / batches.num_batches,
        "lr": lr,
        "loss": loss,
        "terms": {k: v / w.steps for k, v in zip(names, terms, strict=True)},
        "grad_norm": grad_norm / w.steps,
        "items_per_s": items_per_s,
        "elapsed_s": elapsed_s,
    }
    if w.skipped:
        event["skipped_steps"] = w.skipped
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
