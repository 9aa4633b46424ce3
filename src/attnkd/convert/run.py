"""``attnkd convert RECIPE``: convert a teacher's attention and run stage 1 (attention transfer).

Reads top to bottom: validate, load the teacher, convert a copy (every weight inherited, only
the mixers train), let the task build the data and its evaluation (STS Spearman or
perplexity), train the mixers with the engine's ``fit`` on the teacher's layer inputs
(:mod:`attnkd.convert.transfer`), evaluate teacher and converted model side by side, save the
converted model (``student/``: safetensors + ``conversion.json``, :func:`load_converted`).

A conversion-specific sequence: stage 2 (block alignment) and stage 3 (end-to-end KD, LoRA) are
not run here yet; when the runner gains its general stage mechanism this becomes one of them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from attnkd.atomic import write_json
from attnkd.config.io import dump_yaml
from attnkd.config.schema import DistillConfig
from attnkd.convert.io import save_converted
from attnkd.convert.swap import ConversionSpec, convert_attention, mixer_parameters
from attnkd.convert.transfer import TransferModule, make_transfer_step
from attnkd.engine.checkpoint import load_checkpoint
from attnkd.engine.loop import FitResult, fit
from attnkd.errors import AttnkdError, ConfigError
from attnkd.models.load import count_parameters, freeze
from attnkd.tasks import get_task
from attnkd.validate import validate

log = logging.getLogger("attnkd")


def run_similarity(cfg: DistillConfig, batches: int = 8, max_js: float = 0.05) -> dict:
    """EchoAtt analysis of ``cfg.teacher`` on ``batches`` batches of the recipe's training data
    (``train.batch_size`` each): the layer x layer table and the suggested sharing."""
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
            "suggested_sharing": table.suggest(max_js), "table": table.format()}  # fmt: skip


def spec_from_config(cfg: DistillConfig) -> ConversionSpec:
    c = cfg.convert
    if not c.kind:
        raise ConfigError("convert.kind", "set it to 'linear', 'window' or 'hybrid'")
    return ConversionSpec(kind=c.kind, layers=c.layers, window=c.window, chunk=c.chunk)


def run_convert(
    cfg: DistillConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict:
    """Convert ``cfg.teacher`` as ``cfg.convert`` says and train stage 1; returns results.json."""
    spec = spec_from_config(cfg)
    validate(cfg)
    task = get_task(cfg.task)
    run_dir = Path(cfg.output_dir) / cfg.name
    if (run_dir / "checkpoints").exists() and not (resume or overwrite):
        raise AttnkdError(
            f"run folder {run_dir} already holds checkpoints: pass --resume to continue it, "
            "--overwrite to start again, or set name=<new name>"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)

    loaded = task.load(cfg.teacher.name, cfg.teacher.attn_implementation)
    teacher, tok = freeze(loaded.model), loaded.tokenizer
    student = freeze(convert_attention(teacher, spec))
    for p in mixer_parameters(student):
        p.requires_grad_(True)
    setup = task.setup(cfg, teacher, student, tok)

    t0 = time.time()
    if cfg.train.max_steps == 0:  # evaluate the conversion as built (e.g. window, no training)
        result = FitResult(0, None, None, {}, False, run_dir)
    else:
        module = TransferModule(student)
        result = fit(
            cfg.train, module, make_transfer_step(teacher, student, cfg.convert.loss),
            setup.batches, run_dir, evaluate=setup.evaluate, select_metric=setup.select_metric,
            resume=resume, progress=progress, select_mode=setup.select_mode,
        )  # fmt: skip
        best = run_dir / "checkpoints" / "best"
        if (best / "model.safetensors").exists():
            load_checkpoint(best, module)
    train_s = time.time() - t0
    student.eval()
    final = setup.final()
    save_converted(student, run_dir / "student", tokenizer=tok)
    results = {"name": cfg.name, "task": cfg.task, "conversion": spec.to_dict(), **final}
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
        "stage": "attention_transfer",
        "loss": cfg.convert.loss,
        "steps": result.steps_done,
        "seconds_this_session": train_s,
        "stopped_early": result.stopped_early,
        **setup.train_info,
    }
    write_json(run_dir / "results.json", results, default=str)
    return results
