"""``attnkd convert RECIPE``: convert a teacher's attention and run the conversion stages.

Reads top to bottom: validate, load the teacher, convert a copy (every weight inherited, only
the mixers train), let the task build the data and its evaluation (STS Spearman or
perplexity), train the mixers with the engine's ``fit`` on the teacher's layer inputs
(:mod:`attnkd.convert.transfer`), evaluate teacher and converted model side by side, save the
converted model (``student/``: safetensors + ``conversion.json``, :func:`load_converted`).

``convert.stages`` lists what runs, in order: ``transfer`` (stage 1, :mod:`.transfer`), ``align``
(stage 2, MOHAWK block outputs, :mod:`.align`) and ``e2e`` (stage 3, end-to-end KD, :mod:`.e2e`;
through LoRA adapters merged before saving when ``convert.lora.rank`` >= 1, :mod:`.lora`).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
from torch import nn

from attnkd.atomic import write_json
from attnkd.config.io import dump_yaml
from attnkd.config.schema import DistillConfig
from attnkd.convert.align import make_align_step, set_trainable
from attnkd.convert.e2e import make_e2e_step
from attnkd.convert.io import CONVERSION, load_converted, save_converted
from attnkd.convert.lora import add_lora, lora_modules, merge_lora
from attnkd.convert.mla import convert_to_mla
from attnkd.convert.swap import ConversionSpec, convert_attention, mixer_parameters
from attnkd.convert.transfer import TransferModule, make_transfer_step
from attnkd.engine.checkpoint import load_checkpoint
from attnkd.engine.loop import FitResult, fit
from attnkd.errors import AttnkdError, ConfigError
from attnkd.models.load import count_parameters, freeze
from attnkd.tasks import get_task
from attnkd.validate import validate

log = logging.getLogger("attnkd")


def run_similarity(
    cfg: DistillConfig, batches: int = 8, max_js: float = 0.05, share: int = 0
) -> dict:
    """EchoAtt analysis of ``cfg.teacher`` on ``batches`` batches of the recipe's training data
    (``train.batch_size`` each): the layer x layer table, the sharing under ``max_js`` and the
    ``share`` most alike sharing layers (:meth:`SimilarityTable.choose_sharing`)."""
    from attnkd.convert.similarity import attention_similarity

    task = get_task(cfg.task)
    loaded = task.load(cfg.teacher.name, "eager")
    model, tok = freeze(loaded.model), loaded.tokenizer
    n = batches * cfg.train.batch_size
    if cfg.task == "causal_lm":
        from attnkd.data.lm import LMBatches
        from attnkd.tasks.causal_lm import lm_splits

        source = LMBatches(lm_splits(cfg, tok).train[:n], cfg.train.batch_size, cfg.train.seed)
    else:
        from attnkd.data.corpus import build_corpus
        from attnkd.tasks.sentence import GroupedBatches

        corpus = build_corpus(cfg.data.train_sources, cfg.data.data_dir, max_sentences=n,
                              seed=cfg.train.seed, bad_rows=cfg.data.bad_rows)  # fmt: skip
        source = GroupedBatches(corpus.sentences, tok, cfg.train.batch_size,
                                cfg.data.max_length, cfg.train.seed)  # fmt: skip
    count = min(batches, source.num_batches)
    table = attention_similarity(model, (source.batch_at(0, i) for i in range(count)))
    return {"teacher": cfg.teacher.name, **table.to_dict(), "max_js": max_js,
            "suggested_sharing": table.suggest(max_js), "table": table.format(),
            "chosen_sharing": table.choose_sharing(share)}  # fmt: skip


def spec_from_config(cfg: DistillConfig) -> ConversionSpec:
    c = cfg.convert
    if not c.kind:
        raise ConfigError(
            "convert.kind", "set it to 'linear', 'window', 'hybrid', 'shared' or 'sparse'"
        )
    return ConversionSpec(kind=c.kind, layers=c.layers, window=c.window, chunk=c.chunk,
                          share=c.share, topk=c.topk, rank=c.rank,
                          terrace=c.terrace, sinks=c.sinks)  # fmt: skip


class StudentModule(nn.Module):
    """The whole converted student for stages 2-3 (only what :func:`set_trainable` chose has
    gradients). It stays in eval mode (no dropout), as in stage 1: the targets are the
    deterministic teacher's; only LoRA's own dropout (``convert.lora.dropout``) follows ``mode``."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def train(self, mode: bool = True) -> StudentModule:
        super().train(mode)
        self.student.eval()
        for name, m in self.student.named_modules():
            if name.endswith("lora_dropout"):
                m.train(mode)
        return self


def stage_plan(cfg: DistillConfig, teacher: nn.Module, student: nn.Module) -> list[tuple]:
    """``[(stage name, prepare), ...]`` for ``cfg.convert.stages``; ``prepare()`` (called just
    before the stage trains) sets what trains and returns ``(module to train, step function,
    LoraSetup or None)``. Configuration errors are raised here, before any stage trains."""
    c = cfg.convert
    lora = c.lora.rank >= 1

    def transfer():
        for p in student.parameters():
            p.requires_grad_(False)
        for p in mixer_parameters(student):
            p.requires_grad_(True)
        module = TransferModule(student)
        return module, make_transfer_step(teacher, student, c.loss), None

    def whole(stage: str):
        def prepare():
            setup = None
            if stage == "e2e" and lora:
                setup = add_lora(student, c.lora.rank, c.lora.alpha, c.lora.dropout,
                                 c.lora.targets)  # fmt: skip
            else:
                set_trainable(student, c.e2e_params)
            build = make_align_step if stage == "align" else make_e2e_step
            return StudentModule(student), build(teacher, student), setup

        return prepare

    plan = []
    for stage in c.stages:
        if stage != "transfer" and not (stage == "e2e" and lora):
            try:  # raises now, not after the stages before it trained
                set_trainable(student, c.e2e_params)
            except ValueError as err:
                raise ConfigError("convert.e2e_params", str(err)) from None
        if stage == "e2e" and lora:
            lora_modules(student, c.lora.targets)
        plan.append((stage, transfer if stage == "transfer" else whole(stage)))
    return plan


def _carried(init: str) -> nn.Module | None:
    """The converted model saved in ``student.init`` (a folder with ``conversion.json``, as a
    staged run hands over), or None when the teacher is to be converted."""
    if init and (Path(init) / CONVERSION).is_file():
        return load_converted(init)
    return None


def run_convert(
    cfg: DistillConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict:
    """Convert ``cfg.teacher`` as ``cfg.convert`` says and run its stages; returns
    results.json. One stage trains in the run folder itself; several train in
    ``stage<k>-<name>/`` folders, each from the best weights of the one before."""
    spec = spec_from_config(cfg)
    validate(cfg)
    task = get_task(cfg.task)
    run_dir = Path(cfg.output_dir) / cfg.name
    stages = cfg.convert.stages if cfg.train.max_steps else []
    dirs = [run_dir] if len(stages) == 1 else [
        run_dir / f"stage{k + 1}-{name}" for k, name in enumerate(stages)]  # fmt: skip
    if any((d / "checkpoints").exists() for d in dirs) and not (resume or overwrite):
        raise AttnkdError(
            f"run folder {run_dir} already holds checkpoints: pass --resume to continue it, "
            "--overwrite to start again, or set name=<new name>"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)

    loaded = task.load(cfg.teacher.name, cfg.teacher.attn_implementation)
    teacher, tok = freeze(loaded.model), loaded.tokenizer
    carried = _carried(cfg.student.init)
    mla = spec.kind == "mla" and carried is None
    if carried is not None:  # a stage after another conversion stage: its converted student
        student = freeze(carried)
    else:
        student = freeze(copy.deepcopy(teacher) if mla else convert_attention(teacher, spec))
    for p in mixer_parameters(student):
        p.requires_grad_(True)
    setup = task.setup(cfg, teacher, student, tok)
    if mla:  # in place (the task's evaluation holds this student): activation PCA on 8 batches
        calibration = [
            setup.batches.batch_at(0, i) for i in range(min(8, setup.batches.num_batches))
        ]
        freeze(convert_to_mla(student, spec.rank, spec.layers, calibration, inplace=True))

    t0 = time.time()
    done = []
    plan = stage_plan(cfg, teacher, student) if stages else []
    for (stage, prepare), stage_dir in zip(plan, dirs, strict=True):
        module, step, lora = prepare()
        stage_dir.mkdir(parents=True, exist_ok=True)
        t_stage = time.time()
        result = fit(
            cfg.train, module, step, setup.batches, stage_dir, evaluate=setup.evaluate,
            select_metric=setup.select_metric, resume=resume, progress=progress,
            select_mode=setup.select_mode,
        )  # fmt: skip
        best = stage_dir / "checkpoints" / "best"
        if (best / "model.safetensors").exists():
            load_checkpoint(best, module)
        if lora is not None:  # fold the adapters in: the student saves and loads without peft
            merge_lora(lora)
        done.append({"stage": stage, "steps": result.steps_done, "best_step": result.best_step,
                     f"select_{setup.select_metric}": result.best_metric,
                     "stopped_early": result.stopped_early,
                     "seconds_this_session": time.time() - t_stage})  # fmt: skip
        if lora is not None:
            done[-1]["lora"] = {
                "rank": cfg.convert.lora.rank,
                "alpha": cfg.convert.lora.alpha,
                "modules": len(lora.modules),
                "trainable_params": sum(p.numel() for p in lora.trainable),
            }
    if not done:  # evaluate the conversion as built (e.g. window, no training)
        result = FitResult(0, None, None, {}, False, run_dir)
    train_s = time.time() - t0
    student.eval()
    final = setup.final()
    save_converted(student, run_dir / "student", tokenizer=tok)
    conversion = student.attnkd_conversion if mla or carried is not None else spec.to_dict()
    results = {"name": cfg.name, "task": cfg.task, "conversion": conversion, **final}
    results["teacher"] = {"name": cfg.teacher.name, **final["teacher"],
                          "params": count_parameters(teacher)}  # fmt: skip
    results["student"] = {
        **final["student"],
        "params": count_parameters(student),
        "new_params": sum(p.numel() for p in mixer_parameters(student)),
        "best_step": result.best_step,
        f"select_{setup.select_metric}": result.best_metric,
    }
    results["train"] = {
        "stage": "+".join(s["stage"] for s in done) or "none",
        "loss": cfg.convert.loss,
        "steps": sum(s["steps"] for s in done),
        "seconds_this_session": train_s,
        "stopped_early": any(s["stopped_early"] for s in done),
        "stages": done,
        **setup.train_info,
    }
    write_json(run_dir / "results.json", results, default=str)
    return results
