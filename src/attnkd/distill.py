"""The distillation recipe runner: config in, distilled student and report data out.

One function, :func:`run_distill`, reads top to bottom: validate, load the teacher, build the
student and the loss terms, build the corpus, train with the engine, evaluate teacher and
student side by side, export. The teacher is frozen, runs under ``torch.no_grad()`` and stays
outside the module the optimizer sees.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkd.capture import Capture
from attnkd.config.io import dump_yaml
from attnkd.config.schema import DistillConfig
from attnkd.config.validate import validate
from attnkd.data.benchmarks import read_stsb
from attnkd.data.collate import DynamicPaddingCollator, LengthGroupedBatches, TokenizedTexts
from attnkd.data.corpus import build_corpus, split_validation
from attnkd.engine.checkpoint import load_checkpoint
from attnkd.engine.loop import FitResult, StepOutput, fit
from attnkd.errors import AttnkdError, ConfigError
from attnkd.eval.sts import sts_eval
from attnkd.losses.terms import build_terms, collect_taps
from attnkd.models.adapters import geometry
from attnkd.models.load import count_parameters, freeze, load_encoder
from attnkd.students.build import build_student, select_layers

log = logging.getLogger("attnkd")


@dataclass
class EvalPairs:
    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def sentences(self) -> set[str]:
        return set(self.sentences1) | set(self.sentences2)


def eval_pairs(cfg: DistillConfig, task: str | None = None) -> EvalPairs:
    """An STS split: 'stsb:dev', or 'stsb:val' (a held-out part of STS-B train, by seed).

    ``task`` defaults to ``cfg.data.eval_task``.
    """
    task = task or cfg.data.eval_task
    if task == "stsb:dev":
        pairs = read_stsb("dev", cfg.data.data_dir)
    else:
        pairs = split_validation(
            read_stsb("train", cfg.data.data_dir), cfg.data.val_fraction, cfg.train.seed
        ).val
    return EvalPairs(
        task,
        [p.sentence1 for p in pairs],
        [p.sentence2 for p in pairs],
        [p.score for p in pairs],
    )


class GroupedBatches:
    """Length-grouped, collated batches addressable by (epoch, index) for exact resume."""

    def __init__(
        self, sentences: list[str], tokenizer, batch_size: int, max_length: int, seed: int
    ):
        if len(sentences) < batch_size:  # drop_last would leave no batch at all
            raise ConfigError(
                "train.batch_size",
                f"{batch_size} is more than the {len(sentences)} training sentences",
            )
        self.collate = DynamicPaddingCollator(tokenizer, max_length=max_length)
        self.tokens = TokenizedTexts(tokenizer, sentences, max_length)  # tokenised once
        self.sampler = LengthGroupedBatches(
            self.tokens.lengths, batch_size, seed=seed, drop_last=True
        )
        self._epoch, self._order = -1, []

    @property
    def num_batches(self) -> int:
        return len(self.sampler.lengths) // self.sampler.batch_size

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.sampler.batches(epoch)
        return self.collate.pad([self.tokens.ids(i) for i in self._order[index]])


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
    run_dir = Path(cfg.output_dir) / cfg.name
    if run_dir.exists() and (run_dir / "checkpoints").exists() and not (resume or overwrite):
        raise AttnkdError(
            f"run folder {run_dir} already holds checkpoints: pass --resume to continue it, "
            "--overwrite to start again, or set name=<new name>"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)

    teacher_m = load_encoder(cfg.teacher.name, cfg.teacher.attn_implementation)
    teacher, tok = freeze(teacher_m.model), teacher_m.tokenizer
    student = _make_student(cfg, teacher)
    sg = geometry(student.config)
    terms = build_terms(cfg.losses, teacher_m.geometry, sg)
    distiller = Distiller(student, terms)
    if cfg.train.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)

    evalset = eval_pairs(cfg, cfg.data.eval_task)
    selectset = eval_pairs(cfg, cfg.data.select_task)
    corpus = build_corpus(
        cfg.data.train_sources, cfg.data.data_dir, max_sentences=cfg.data.max_sentences,
        seed=cfg.train.seed, exclude=evalset.sentences() | selectset.sentences(),
        bad_rows=cfg.data.bad_rows,
    )  # fmt: skip
    log.info("corpus: %s", corpus.summary())
    batches = GroupedBatches(
        corpus.sentences, tok, cfg.train.batch_size, cfg.data.max_length, cfg.train.seed
    )

    def evaluate(pairs: EvalPairs = selectset) -> dict[str, float]:
        r = sts_eval(student, tok, pairs.sentences1, pairs.sentences2, pairs.scores,
                     max_length=cfg.data.max_length)  # fmt: skip
        return {"spearman": r.spearman, "pearson": r.pearson}

    t0 = time.time()
    if cfg.train.max_steps == 0:  # evaluate and export the student as built (baselines)
        result = FitResult(0, None, None, {}, False, run_dir)
    else:
        result = fit(
            cfg.train, distiller, make_step(teacher, distiller), batches, run_dir,
            evaluate=evaluate, select_metric="spearman", resume=resume, progress=progress,
        )  # fmt: skip
    train_s = time.time() - t0
    best = run_dir / "checkpoints" / "best"
    if (best / "model.safetensors").exists():
        load_checkpoint(best, distiller)
    final = evaluate(evalset)
    t_eval = sts_eval(teacher, tok, evalset.sentences1, evalset.sentences2, evalset.scores,
                      max_length=cfg.data.max_length)  # fmt: skip
    from attnkd.export import export_student

    export_student(student, tok, run_dir / "student")
    results = {
        "name": cfg.name,
        "eval_split": evalset.name,
        "select_split": selectset.name,
        "eval_pairs": len(evalset.scores),
        "teacher": {
            "name": cfg.teacher.name,
            "spearman": t_eval.spearman,
            "params": count_parameters(teacher),
        },  # fmt: skip
        "student": {
            "spearman": final["spearman"],
            "params": count_parameters(student),
            "layers": sg.num_layers,
            "best_step": result.best_step,
            "select_spearman": result.best_metric,
        },  # fmt: skip
        "retention": final["spearman"] / t_eval.spearman,
        "train": {
            "steps": result.steps_done,
            "seconds_this_session": train_s,
            "stopped_early": result.stopped_early,
            "corpus_sentences": len(corpus.sentences),
        },  # fmt: skip
    }
    _write_json(run_dir / "results.json", results)
    return results


def _make_student(cfg: DistillConfig, teacher: nn.Module) -> nn.Module:
    s = cfg.student
    if s.init == "teacher":
        layers = select_layers(teacher.config.num_hidden_layers, s.layers, s.layer_rule)
        student, report = build_student(
            teacher, layers, s.hidden_size, s.num_heads, s.intermediate_size, s.attn_implementation
        )
        if report.fresh:
            log.info("freshly initialised (shape changed): %d tensors", len(report.fresh))
        return student
    student = load_encoder(s.init, s.attn_implementation, tokenizer=False).model
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
