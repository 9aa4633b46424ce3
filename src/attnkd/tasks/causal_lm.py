"""Causal language modelling: text in, next-token perplexity on held-out blocks out.

The training text (``data.train_sources``) is tokenised into one stream and cut into disjoint
blocks of ``data.max_length`` tokens, split by position: the last ``data.eval_fraction`` of the
blocks are the evaluation split, the ``data.val_fraction`` before them the selection split (the
best checkpoint is picked there, by lowest perplexity), the rest is trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from attnkd.config.schema import DistillConfig
from attnkd.data.lm import LMBatches, LMSplits, lm_texts, split_blocks, tokenize_stream
from attnkd.eval.perplexity import perplexity
from attnkd.export import export_student
from attnkd.models.load import load_causal_lm
from attnkd.tasks.base import Task, TaskSetup

log = logging.getLogger("attnkd")

EVAL_BATCH = 8


def lm_splits(cfg: DistillConfig, tok) -> LMSplits:
    """The run's token blocks (train / select / eval) from ``cfg.data`` and the tokenizer."""
    d = cfg.data
    ids = tokenize_stream(tok, lm_texts(d.train_sources, d.data_dir, bad_rows=d.bad_rows))
    return split_blocks(ids, d.max_length, d.val_fraction, d.eval_fraction)


def setup(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, tok) -> TaskSetup:
    d = cfg.data
    splits = lm_splits(cfg, tok)
    blocks = len(splits.train) + len(splits.select) + len(splits.eval)
    log.info(
        "token stream: %d tokens -> %d train / %d select / %d eval blocks of %d",
        blocks * d.max_length + splits.dropped_tokens, len(splits.train), len(splits.select),
        len(splits.eval), d.max_length,
    )  # fmt: skip
    batches = LMBatches(splits.train, cfg.train.batch_size, cfg.train.seed)

    def evaluate() -> dict[str, float]:
        r = perplexity(student, splits.select, batch_size=EVAL_BATCH)
        return {"perplexity": r.ppl, "nll": r.nll}

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

    info = {"train_blocks": len(splits.train), "train_tokens": len(splits.train) * d.max_length}
    return TaskSetup(batches, evaluate, "perplexity", "min", final, export, train_info=info)


TASK = Task("causal_lm", load_causal_lm, setup)
