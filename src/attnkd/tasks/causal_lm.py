"""Causal language modelling: text in, next-token perplexity on held-out blocks out.

The training text (``data.train_sources``) is tokenised into one stream and cut into disjoint
blocks of ``data.max_length`` tokens, split by position: the last ``data.eval_fraction`` of the
blocks are the evaluation split, the ``data.val_fraction`` before them the selection split (the
best checkpoint is picked there, by lowest perplexity or, with ``train.select_metric: alpha``,
by the student's teacher-forced acceptance as a speculative draft), the rest is trained on, less any
training block that repeats a line of the held-out blocks (a source listed twice under two
specs, a document quoting another; see :func:`attnkd.data.lm.drop_held_out_copies`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from attnkd.config.schema import DistillConfig
from attnkd.data.lm import (
    HeldOutCopies,
    LMBatches,
    LMSplits,
    drop_held_out_copies,
    lm_texts,
    split_blocks,
    tokenize_lines,
)
from attnkd.data.onpolicy import OnPolicyBatches
from attnkd.eval.draft_alpha import AlphaProbe
from attnkd.eval.perplexity import perplexity
from attnkd.export import export_student
from attnkd.models.load import load_causal_lm
from attnkd.tasks.base import Task, TaskSetup

log = logging.getLogger("attnkd")

EVAL_BATCH = 8
ALPHA_BLOCKS = 2
"""Selection blocks on which the student's acceptance α as a draft is logged at each eval."""


def lm_splits(cfg: DistillConfig, tok) -> LMSplits:
    """The run's token blocks (train / select / eval) from ``cfg.data`` and the tokenizer;
    training blocks repeating held-out text are dropped (counted in ``.copies``)."""
    d = cfg.data
    stream = tokenize_lines(tok, lm_texts(d.train_sources, d.data_dir, bad_rows=d.bad_rows))
    splits = split_blocks(stream.ids, d.max_length, d.val_fraction, d.eval_fraction)
    return drop_held_out_copies(splits, stream)


def setup(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, tok) -> TaskSetup:
    d = cfg.data
    splits = lm_splits(cfg, tok)
    copies = splits.copies or HeldOutCopies(0, 0)
    blocks = len(splits.train) + len(splits.select) + len(splits.eval) + copies.blocks
    log.info(
        "token stream: %d tokens -> %d train / %d select / %d eval blocks of %d",
        blocks * d.max_length + splits.dropped_tokens, len(splits.train), len(splits.select),
        len(splits.eval), d.max_length,
    )  # fmt: skip
    if copies.blocks:
        log.warning(
            "%d training blocks dropped: they repeat %d lines of the select/eval blocks "
            "(is a source listed twice?)", copies.blocks, copies.lines,
        )  # fmt: skip
    if cfg.teacher.cache:  # the teacher's top-k targets come from disk (attnkd.data.teacher_cache)
        from attnkd.data.cache_match import cached_batches

        batches = cached_batches(cfg, teacher, tok, splits.train)
    else:
        batches = LMBatches(splits.train, cfg.train.batch_size, cfg.train.seed)
    if d.on_policy > 0:  # GKD / DistillSpec: λ of each batch's rows continued by the student
        batches = OnPolicyBatches(batches, student, d.on_policy, d.on_policy_prefix,
                                  seed=cfg.train.seed)  # fmt: skip
    # the student judged as a draft; not with teacher.cache, whose runs never run the teacher
    alpha = None if cfg.teacher.cache else AlphaProbe(teacher, splits.select[:ALPHA_BLOCKS])

    def evaluate() -> dict[str, float]:
        r = perplexity(student, splits.select, batch_size=EVAL_BATCH)
        out = {"perplexity": r.ppl, "nll": r.nll, **(alpha(student) if alpha else {})}
        if isinstance(batches, OnPolicyBatches):  # generation cost so far
            out["onpolicy_gen_seconds"] = batches.seconds
            out["onpolicy_gen_tokens"] = float(batches.tokens)
        return out

    def final() -> dict:
        s = perplexity(student, splits.eval, batch_size=EVAL_BATCH, progress=True)
        t = perplexity(teacher, splits.eval, batch_size=EVAL_BATCH, progress=True)
        return {
            "eval_split": f"last {d.eval_fraction:g} of the token blocks",
            "select_split": f"the {d.val_fraction:g} of blocks before it",
            "eval_tokens": s.tokens,
            "teacher": {"perplexity": t.ppl, "nll": t.nll},
            "student": {"perplexity": s.ppl, "nll": s.nll},
            # nll retention: teacher NLL / student NLL (mean per-token negative log-likelihoods);
            # it reads high even for a much worse student (1.84x the perplexity at 88%), so the
            # perplexity ratio (student / teacher; 1.0 = as good, higher = worse) is beside it
            "retention": t.nll / s.nll if s.nll > 0 else float("nan"),
            "perplexity_ratio": s.ppl / t.ppl,
        }

    def export(folder: Path) -> Path:
        return export_student(student, tok, folder, sentence_transformers=False)

    info = {
        "train_blocks": len(splits.train),
        "train_tokens": len(splits.train) * d.max_length,
        "held_out_copies": {"lines": copies.lines, "blocks_dropped": copies.blocks},
    }
    metric = cfg.train.select_metric or "perplexity"
    mode = "min" if metric == "perplexity" else "max"
    return TaskSetup(batches, evaluate, metric, mode, final, export, train_info=info)


TASK = Task("causal_lm", load_causal_lm, setup)
