"""The distillation recipe runner: config in, distilled student and report data out.

One function, :func:`run_distill`, reads top to bottom: validate, load the teacher, build the
student and the loss terms, let the task (``cfg.task``: sentence embeddings or causal LM, see
:mod:`attnkd.tasks`) build the data and its evaluation, train with the engine, evaluate teacher
and student side by side, export. The teacher is frozen, runs under ``torch.no_grad()`` and stays
outside the module the optimizer sees.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkd.capture import Capture
from attnkd.config.io import dump_yaml
from attnkd.config.schema import DistillConfig
from attnkd.config.validate import validate
from attnkd.engine.checkpoint import load_checkpoint
from attnkd.engine.loop import FitResult, StepOutput, fit
from attnkd.errors import AttnkdError
from attnkd.losses.terms import build_terms, collect_taps
from attnkd.models.adapters import geometry
from attnkd.models.load import count_parameters, freeze
from attnkd.students.build import build_student, select_layers
from attnkd.tasks import Task, get_task
from attnkd.tasks.sentence import EvalPairs, GroupedBatches, eval_pairs

log = logging.getLogger("attnkd")

__all__ = ["Distiller", "EvalPairs", "GroupedBatches", "eval_pairs", "make_step", "run_distill"]


class Distiller(nn.Module):
    """Student plus loss terms (with their projectors): exactly what the optimizer trains."""

    def __init__(self, student: nn.Module, terms: nn.ModuleList):
        super().__init__()
        self.student = student
        self.terms = terms


def make_step(teacher: nn.Module, distiller: Distiller):
    """The per-batch function: teacher forward (no grad), student forward, weighted terms."""
    t_taps, s_taps = collect_taps(distiller.terms)
    t_cap = Capture(teacher, t_taps)
    s_cap = Capture(distiller.student, s_taps)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        mask = batch["attention_mask"].bool()
        with torch.no_grad(), t_cap:
            teacher(**batch)
        with s_cap:
            distiller.student(**batch)
        total = torch.zeros(())
        values: dict[str, float] = {}
        for term in distiller.terms:
            parts = term(t_cap.taps, s_cap.taps, mask)
            for name, v in parts.items():
                values[f"{term.label}/{name}"] = float(v.detach())
                total = total + term.weight * v
        t_cap.taps.clear()
        s_cap.taps.clear()
        return StepOutput(loss=total, terms=values, num_items=int(mask.shape[0]))

    return step


def run_distill(
    cfg: DistillConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict:
    """Run one distillation recipe; returns (and writes) ``results.json``'s content."""
    validate(cfg)
    task = get_task(cfg.task)
    if task.prepare is not None:  # e.g. the image task's teacher stage
        task.prepare(cfg)
    run_dir = Path(cfg.output_dir) / cfg.name
    if run_dir.exists() and (run_dir / "checkpoints").exists() and not (resume or overwrite):
        raise AttnkdError(
            f"run folder {run_dir} already holds checkpoints: pass --resume to continue it, "
            "--overwrite to start again, or set name=<new name>"
        )
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
    best = run_dir / "checkpoints" / "best"
    if (best / "model.safetensors").exists():
        load_checkpoint(best, distiller)
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
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_default) + "\n")
    tmp.replace(path)


def _default(o):
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)
