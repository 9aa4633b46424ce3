"""The distillation recipe runner: config in, distilled student and report data out.

One function, :func:`run_distill`, reads top to bottom: validate, load the teacher, build the
student and the loss terms, let the task (``cfg.task``: sentence embeddings or causal LM, see
:mod:`attnkd.tasks`) build the data and its evaluation, train with the engine, evaluate teacher
and student side by side, export. The teacher is frozen, runs under ``torch.no_grad()`` and stays
outside the module the optimizer sees.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkd.atomic import write_json
from attnkd.capture import Capture, Taps
from attnkd.config.io import dump_yaml
from attnkd.config.schema import DistillConfig
from attnkd.engine.checkpoint import load_checkpoint
from attnkd.engine.device import resolve_device, teacher_dtype_of
from attnkd.engine.loop import FitResult, StepOutput, fit
from attnkd.errors import AttnkdError, ConfigError
from attnkd.losses.terms import build_terms, collect_taps
from attnkd.models.adapters import geometry
from attnkd.models.load import count_parameters, freeze
from attnkd.students.build import build_student, select_layers
from attnkd.tasks import Task, get_task
from attnkd.validate import validate

log = logging.getLogger("attnkd")

__all__ = ["Distiller", "make_step", "run_distill"]


class Distiller(nn.Module):
    """Student plus loss terms (with their projectors): exactly what the optimizer trains."""

    def __init__(self, student: nn.Module, terms: nn.ModuleList):
        super().__init__()
        self.student = student
        self.terms = terms


def make_step(teacher: nn.Module, distiller: Distiller):
    """The per-batch function: teacher forward (no grad), student forward, weighted terms.

    The engine places the batch on the models' device and runs this under autocast when
    ``train.precision`` asks for it; the loss terms run outside autocast on float32 copies of
    half-precision taps, so every loss (and its projectors) is computed in float32.
    """
    t_taps, s_taps = collect_taps(distiller.terms)
    t_cap = Capture(teacher, t_taps)
    s_cap = Capture(distiller.student, s_taps)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        mask = batch["attention_mask"].bool()
        with torch.no_grad(), t_cap:
            teacher(**batch)
        with s_cap:
            distiller.student(**batch)
        total: Tensor | None = None
        values: dict[str, float] = {}
        with torch.autocast(mask.device.type, enabled=False):
            t, s = float32_taps(t_cap.taps), float32_taps(s_cap.taps)
            for term in distiller.terms:
                for name, v in term(t, s, mask).items():
                    values[f"{term.label}/{name}"] = float(v.detach())
                    total = term.weight * v if total is None else total + term.weight * v
        t_cap.taps.clear()
        s_cap.taps.clear()
        assert total is not None, "a distillation needs at least one loss term"
        return StepOutput(loss=total, terms=values, num_items=int(mask.shape[0]))

    return step


def float32_taps(taps: Taps) -> Taps:
    """The same taps with half-precision tensors (autocast outputs, a bf16 teacher) as float32
    copies; float32 tensors are passed through as they are."""
    half = (torch.float16, torch.bfloat16)
    if not any(x.dtype in half for x in taps.tensors.values()):
        return taps
    return Taps({k: x.float() if x.dtype in half else x for k, x in taps.tensors.items()})


def run_distill(
    cfg: DistillConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict:
    """Run one distillation recipe; returns (and writes) ``results.json``'s content."""
    validate(cfg)
    task = get_task(cfg.task)
    if task.prepare is not None:  # e.g. the image task's teacher stage
        task.prepare(cfg, run_distill)
    run_dir = Path(cfg.output_dir) / cfg.name
    if run_dir.exists() and (run_dir / "checkpoints").exists() and not (resume or overwrite):
        raise AttnkdError(
            f"run folder {run_dir} already holds checkpoints: pass --resume to continue it, "
            "--overwrite to start again, or set name=<new name>"
        )
    if resume and not (run_dir / "config.yaml").exists():  # a typo in the name, most often
        raise ConfigError(
            "name",
            f"--resume: there is no run at {run_dir} (no config.yaml); check name= "
            "and output_dir=, or drop --resume to start it",
        )
    device = resolve_device(cfg.train.device)
    teacher_dtype = teacher_dtype_of(cfg.train)
    if overwrite and not resume:
        _clear_previous_run(run_dir)  # a run reports and exports only what it trained
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)

    teacher_m = task.load(cfg.teacher.name, cfg.teacher.attn_implementation)
    teacher, tok = freeze(teacher_m.model), teacher_m.tokenizer
    student = _make_student(cfg, teacher, task)
    sg = geometry(student.config)
    terms = build_terms(cfg.losses, teacher_m.geometry, sg)
    distiller = Distiller(student, terms)
    if cfg.train.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    teacher.to(device=device, dtype=teacher_dtype)  # dtype None: as loaded
    distiller.to(device)
    log.info("training on %s (teacher %s)", device, next(teacher.parameters()).dtype)
    setup = task.setup(cfg, teacher, student, tok)

    t0 = time.time()
    if cfg.train.max_steps == 0:  # evaluate and export the student as built (baselines)
        result = FitResult(0, None, None, {}, False, run_dir)
    else:
        result = fit(
            cfg.train, distiller, (task.make_step or make_step)(teacher, distiller),
            setup.batches, run_dir,
            evaluate=setup.evaluate, select_metric=setup.select_metric, resume=resume,
            progress=progress, select_mode=setup.select_mode,
        )  # fmt: skip
    train_s = time.time() - t0
    if result.best_step is not None:  # this run's best (a fresh run cleared older ones)
        best = load_checkpoint(run_dir / "checkpoints" / "best", distiller)
        if best.state.best_step != result.best_step:
            raise AttnkdError(
                f"{best.path} holds step {best.state.best_step}, but this run's best is step "
                f"{result.best_step}; rerun with --overwrite"
            )
    final = setup.final()
    setup.export(run_dir / "student")
    results = {"name": cfg.name, "task": cfg.task, **final}
    results["teacher"] = {
        "name": cfg.teacher.name,
        **final["teacher"],
        "params": count_parameters(teacher),
    }
    results["student"] = {
        **final["student"],
        "params": count_parameters(student),
        "layers": sg.num_layers,
        "best_step": result.best_step,
        f"select_{setup.select_metric}": result.best_metric,
    }
    results["train"] = {
        "steps": result.steps_done,
        "seconds_this_session": train_s,
        "stopped_early": result.stopped_early,
        **setup.train_info,
    }
    _write_json(run_dir / "results.json", results)
    return results


def _clear_previous_run(run_dir: Path) -> None:
    """``--overwrite``: remove what an earlier run left (checkpoints, metrics, export, results),
    so nothing stale can be reported or exported, even with ``max_steps: 0``."""
    stale = ["checkpoints", "tb", "student", "metrics.jsonl", "results.json"]
    for name in stale:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _make_student(cfg: DistillConfig, teacher: nn.Module, task: Task) -> nn.Module:
    s = cfg.student
    if s.init == "teacher":
        layers = select_layers(teacher.config.num_hidden_layers, s.layers, s.layer_rule)
        student, report = build_student(
            teacher, layers, s.hidden_size, s.num_heads, s.intermediate_size, s.attn_implementation
        )
        if report.fresh:
            log.info("freshly initialised (shape changed): %d tensors", len(report.fresh))
        return student
    student = task.load(s.init, s.attn_implementation, tokenizer=False).model
    student.train()
    return student


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, default=_default)


def _default(o):
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)
