"""The distillation recipe runner: config in, distilled student and report data out.

One function, :func:`run_distill`, reads top to bottom: validate, load the teacher, build the
student and the loss terms, let the task (``cfg.task``: sentence embeddings or causal LM, see
:mod:`attnkd.tasks`) build the data and its evaluation, train with the engine, evaluate teacher
and student side by side, export. The teacher is frozen, runs under ``torch.no_grad()`` and stays
outside the module the optimizer sees. A teacher set (``teachers:``), a peer trained alongside
(``strategy.peer``) and chained runs (``strategy.generations`` / ``partitions``) take the single
teacher's place through :mod:`attnkd.teachers` (docs/teachers.md).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkd.atomic import write_json
from attnkd.capture import Capture, Tap, Taps
from attnkd.config.io import dump_yaml
from attnkd.config.schema import DistillConfig
from attnkd.data.teacher_cache import pop_cached_taps
from attnkd.engine import distributed
from attnkd.engine.checkpoint import load_checkpoint
from attnkd.engine.device import resolve_device, teacher_dtype_of
from attnkd.engine.loop import FitResult, StepOutput, fit
from attnkd.errors import AttnkdError, ConfigError
from attnkd.losses.terms import bind_terms, build_terms, collect_taps
from attnkd.models.adapters import adapter_for, geometry
from attnkd.models.load import count_parameters, freeze, freeze_input_embeddings, freeze_parts
from attnkd.students.build import build_student, select_layers
from attnkd.tasks import Task, get_task
from attnkd.teachers.load import load_members, prepare_members
from attnkd.teachers.partition import partition_batches
from attnkd.teachers.results import scored_teacher, teaching_results
from attnkd.teachers.runs import generation_configs, partition_configs, run_chain
from attnkd.teachers.set import Member, TeacherTaps, build_set_terms
from attnkd.teachers.steps import (
    MutualPair,
    make_image_set_step,
    make_mutual_step,
    make_set_step,
    make_token_mutual_step,
)
from attnkd.validate import validate

log = logging.getLogger("attnkd")

__all__ = ["Distiller", "make_step", "run_distill"]


class Distiller(nn.Module):
    """Student plus loss terms (with their projectors): exactly what the optimizer trains.

    Its ``forward`` is the student half of a step, so DDP/FSDP2 can wrap this module alone while
    the teacher stays outside (no gradients, no optimizer state).
    """

    def __init__(self, student: nn.Module, terms: nn.ModuleList):
        super().__init__()
        self.student = student
        self.terms = terms
        taps = collect_taps(terms)[1]
        self._capture: Capture | None = None
        # image models and terms (VisionTap): their task's own step captures (tasks/)
        if has_adapter(student) and all(isinstance(t, Tap) for t in taps):
            self._capture = Capture(student, taps)

    def forward(self, batch: dict[str, Tensor], teacher_taps: Taps) -> dict[str, Tensor]:
        """Student forward on ``batch``, then every term against ``teacher_taps``.

        Returns ``{"loss": weighted total (scalar), "<term label>/<part>": each part}``. The
        terms run outside autocast on float32 copies of half-precision taps, so every loss (and
        its projectors) is computed in float32.
        """
        mask = batch["attention_mask"].bool()
        assert self._capture is not None, "Distiller.forward needs a transformer-family student"
        with self._capture:
            self.student(**batch)
        out: dict[str, Tensor] = {}
        total: Tensor | None = None
        with torch.autocast(mask.device.type, enabled=False):
            t = (teacher_taps.map(float32_taps) if isinstance(teacher_taps, TeacherTaps)
                 else float32_taps(teacher_taps))  # fmt: skip
            s = float32_taps(self._capture.taps)
            for term in self.terms:
                for name, v in term(t, s, mask).items():
                    out[f"{term.label}/{name}"] = v
                    total = term.weight * v if total is None else total + term.weight * v
        self._capture.taps.clear()
        assert total is not None, "a distillation needs at least one loss term"
        return {"loss": total, **out}


def has_adapter(model: nn.Module) -> bool:
    """True when ``model`` belongs to a registered transformer family (q/k/v capture works)."""
    try:
        adapter_for(model)
    except ValueError:
        return False
    return True


def make_step(teacher: nn.Module, distiller: Distiller, model: nn.Module | None = None):
    """The per-batch function: teacher forward (no grad), then ``model(batch, teacher_taps)``.

    ``model`` runs the student half: ``distiller`` itself (default) or its DDP wrapper
    (:func:`attnkd.engine.distributed.wrap`), which must be the one called for gradients to be
    synced. The engine places the batch on the models' device and runs this under autocast when
    ``train.precision`` asks for it.
    """
    model = distiller if model is None else model
    t_cap = Capture(teacher, collect_taps(distiller.terms)[0])

    def step(batch: dict[str, Tensor]) -> StepOutput:
        taps = pop_cached_taps(batch)  # teacher.cache: targets read from disk, no teacher run
        if taps is None:
            if t_cap.requests:  # terms on the data alone (lm_ce) need no teacher forward
                with torch.no_grad(), t_cap:
                    teacher(**batch)
            taps = t_cap.taps
        out = model(batch, taps)
        t_cap.taps.clear()
        total = out.pop("loss")
        values = {k: float(v.detach()) for k, v in out.items()}
        return StepOutput(loss=total, terms=values, num_items=int(batch["input_ids"].shape[0]))

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
) -> dict | None:
    """Run one distillation recipe; returns (and writes) ``results.json``'s content.

    Under torchrun (WORLD_SIZE > 1) every rank trains; rank 0 alone evaluates the final student,
    exports and writes, and returns the results; the other ranks return None.
    """
    validate(cfg)  # includes train.distributed
    st = cfg.strategy
    if st.generations > 1 or (st.partitions > 1 and st.part is None):  # chained runs
        chain = generation_configs(cfg) if st.generations > 1 else partition_configs(cfg)
        kind = "generations" if st.generations > 1 else "partitions"
        return run_chain(cfg, chain, kind, run_distill, resume, progress, overwrite)
    task = get_task(cfg.task)
    if cfg.teachers:  # each teacher's recipe first, where one is missing
        prepare_members(cfg, task, run_distill)
    elif task.prepare is not None:  # e.g. the image task's teacher stage
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
    owns_group = not distributed.current().is_distributed
    # dist: joins torchrun's process group when WORLD_SIZE > 1; CUDA ranks use cuda:LOCAL_RANK
    ctx = distributed.init(resolve_device(cfg.train.device))
    try:
        return _run(cfg, task, run_dir, ctx, resume, progress, overwrite)
    finally:
        if owns_group:
            distributed.teardown()


def _run(
    cfg: DistillConfig,
    task: Task,
    run_dir: Path,
    ctx: distributed.DistContext,
    resume: bool,
    progress: bool,
    overwrite: bool,
) -> dict | None:
    device, teacher_dtype = ctx.device, teacher_dtype_of(cfg.train)
    distributed.barrier()  # dist: every rank has checked the run folder before rank 0 writes
    if ctx.is_main:
        if overwrite and not resume:
            _clear_previous_run(run_dir)  # a run reports and exports only what it trained
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)

    if cfg.teachers and task.runs_teachers is not None and task.runs_teachers(cfg):
        # the task's own teacher set (sentence: cached sentence-level targets, each teacher
        # tokenising for itself): it builds the student, trains, scores and exports
        results = task.run_teachers(cfg, run_dir, device, resume, progress)
        _write_json(run_dir / "results.json", results)
        return results
    members: list[Member] = []
    peer = None
    if cfg.teachers:  # a teacher set (attnkd.teachers): the first stands where `teacher` did
        members, tok = load_members(cfg, task)
        teacher, t_geometry = members[0].model, members[0].geometry
    elif cfg.strategy.peer and task.make_step is None:  # token mutual: the peer's tokenizer
        peer_m = task.load(cfg.strategy.peer, cfg.student.attn_implementation)
        peer, tok, t_geometry = peer_m.model.train(), peer_m.tokenizer, peer_m.geometry
        teacher = peer  # no frozen teacher: the peer trains alongside (inside the distiller)
    else:
        teacher_m = task.load(cfg.teacher.name, cfg.teacher.attn_implementation)
        teacher, tok, t_geometry = freeze(teacher_m.model), teacher_m.tokenizer, teacher_m.geometry
    student = _make_student(cfg, teacher, task)
    sg = geometry(student.config)
    distiller = _make_distiller(cfg, task, student, t_geometry, sg, members, peer)
    if cfg.train.freeze_embeddings:
        freeze_input_embeddings(student)  # says so when a tied LM head is frozen with them
    if cfg.student.freeze:  # e.g. one stage of a staged run trains only some layers
        frozen = freeze_parts(student, cfg.student.freeze)
        log.info("student.freeze: %d parameter tensors frozen", len(frozen))
    for t in [m.model for m in members] or [teacher]:  # (a token peer: moved with the distiller)
        t.to(dtype=teacher_dtype)  # dtype None: as loaded
        if not cfg.teacher.cache:  # with a cache the teacher only scores the eval split
            t.to(device=device)
    distiller.to(device)
    log.info("training on %s (teacher %s)", device, next(teacher.parameters()).dtype)
    # dist: train.batch_size is per rank; the task builds global batches, each rank its rows
    world_cfg = replace(
        cfg, train=replace(cfg.train, batch_size=ctx.world_size * cfg.train.batch_size)
    )
    scored = scored_teacher(cfg, teacher, members, distiller)  # "the teacher" in results
    setup = task.setup(world_cfg, scored, student, tok)
    if setup.state is not None:  # e.g. data-mixture weights: checkpointed with the student
        distiller.add_module("task_state", setup.state.to(device))
    if cfg.strategy.part is not None:  # this student's own part of the data
        parts = cfg.strategy.partitions
        setup.batches = partition_batches(setup.batches, parts, cfg.strategy.part, cfg.train.seed)
        setup.train_info["partition"] = {
            "part": cfg.strategy.part, "of": parts, "items": len(setup.batches.data)
        }
    batches = distributed.RankShard(setup.batches, ctx.rank, ctx.world_size)
    if cfg.train.max_steps > 0:  # DDP wrapper or FSDP2 shards; the teacher stays outside
        model = distributed.wrap(distiller, cfg.train.distributed)
        if cfg.train.shard_teacher:  # FSDP2 over the frozen teacher: one block whole at a time
            distributed.shard_frozen(teacher)
            log.info("teacher sharded by FSDP2: %s", distributed.is_sharded(teacher))

    t0 = time.time()
    if cfg.train.max_steps == 0:  # evaluate and export the student as built (baselines)
        result = FitResult(0, None, None, {}, False, run_dir)
    else:
        if isinstance(distiller, MutualPair):
            mutual = make_mutual_step if task.make_step is not None else make_token_mutual_step
            step = mutual(distiller)
        elif members:
            set_step = make_image_set_step if task.make_step is not None else make_set_step
            step = set_step(members, distiller, model)
        else:
            step = (task.make_step or make_step)(teacher, distiller, model)
        result = fit(
            cfg.train, distiller, step,
            batches, run_dir,
            evaluate=setup.evaluate, select_metric=setup.select_metric, resume=resume,
            progress=progress, select_mode=setup.select_mode,
        )  # fmt: skip
    train_s = time.time() - t0
    # dist: rank 0 alone evaluates the final student and writes (no collectives from here on);
    # the other ranks are done (torchrun waits for rank 0 without a timeout)
    if not ctx.is_main:
        return None
    if distributed.is_sharded(teacher):  # rank 0 alone cannot run a sharded teacher
        teacher = freeze(task.load(cfg.teacher.name, cfg.teacher.attn_implementation).model)
        teacher.to(device=device, dtype=teacher_dtype)
        setup = task.setup(world_cfg, teacher, student, tok)
    if distributed.is_sharded(distiller):  # FSDP2: rebuild the student whole from a checkpoint
        student = _make_student(cfg, teacher, task)
        distiller = _make_distiller(cfg, task, student, t_geometry, sg, members, peer)
        distiller.to(device)
        if result.best_step is None:
            load_checkpoint(run_dir / "checkpoints" / "last", distiller)
        setup = task.setup(world_cfg, teacher, student, tok)
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
    if members or isinstance(distiller, MutualPair):
        results.update(teaching_results(cfg, task, world_cfg, members, distiller, tok, run_dir))
        if isinstance(distiller, MutualPair):
            results["teacher"] = {"name": cfg.teacher.name, "params": 0}  # no frozen teacher
        else:
            results["teacher"]["name"] = "ensemble of " + ", ".join(m.label for m in members)
            results["teacher"]["params"] = sum(count_parameters(m.model) for m in members)
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
        "skipped_steps": result.skipped_steps,
        "resumed_from": None if result.resumed_from is None else result.resumed_from.name,
        **setup.train_info,
    }
    _write_json(run_dir / "results.json", results)
    return results


def _make_distiller(cfg, task, student, t_geometry, sg, members, peer=None) -> nn.Module:
    """The trained module: student + terms (a teacher set's routed terms), or, with
    ``strategy.peer``, the student and its peer (loaded here unless given) trained together
    (:class:`MutualPair`)."""
    if cfg.strategy.peer:
        if peer is None:
            peer = task.load(cfg.strategy.peer, cfg.student.attn_implementation).model
            peer.train()
        pg = geometry(peer.config)
        terms, peer_terms = build_terms(cfg.losses, pg, sg), build_terms(cfg.losses, sg, pg)
        bind_terms(terms, student)
        bind_terms(peer_terms, peer)
        return MutualPair(student, peer, terms, peer_terms)
    if members:
        terms = build_set_terms(cfg, [m.geometry for m in members], sg)
    else:
        terms = build_terms(cfg.losses, t_geometry, sg)
    bind_terms(terms, student)
    return Distiller(student, terms)


def _clear_previous_run(run_dir: Path) -> None:
    """``--overwrite``: remove what an earlier run left (checkpoints, metrics, export, results,
    evaluations, report), so nothing stale is reported or exported, even with ``max_steps: 0``."""
    stale = ["checkpoints", "tb", "student", "report", "metrics.jsonl", "results.json"]
    evals = [p.name for p in run_dir.glob("eval-*.json")] if run_dir.is_dir() else []
    for name in stale + evals:
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
