"""Sequence-level KD data (Kim & Rush 2016): the teacher writes training text ahead of training.

``attnkd generate-data RECIPE`` takes prompts from the recipe's *training* blocks (the first
``prompt_tokens`` tokens of blocks drawn with the seed; never the select/eval blocks), lets the
teacher continue each with ``new_tokens`` sampled tokens, and writes a folder atomically:

- ``samples.jsonl``: one JSON object per sample, ``{"text", "prompt_ids", "ids", "block"}``:
  the decoded prompt + continuation, the prompt's and the continuation's token ids, and the
  training block the prompt came from;
- ``manifest.json``: the generation settings, the teacher's name and weights fingerprint, the
  tokenizer and source-text fingerprints, counts, the time taken and the sha256 of
  ``samples.jsonl``.

The folder is a data source: ``data.train_sources: [seqkd:PATH, ...]`` yields each sample's
text (after checking the sha256), for any task.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnkd.atomic import atomic_dir, manifest, write_json
from attnkd.config.schema import DistillConfig
from attnkd.data.seqkd import FORMAT, SAMPLES
from attnkd.errors import AttnkdError, ConfigError

__all__ = ["GenerationSettings", "generate_samples", "run_generate_data"]


@dataclass
class GenerationSettings:
    """How the teacher samples (recorded in the manifest)."""

    samples: int = 64
    prompt_tokens: int = 16
    new_tokens: int = 64
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def check(self, block_size: int) -> None:
        rules = (
            ("--samples", self.samples >= 1, "must be >= 1"),
            ("--prompt-tokens", 1 <= self.prompt_tokens <= block_size,
             f"must be in [1, {block_size}] (data.max_length)"),
            ("--new-tokens", self.new_tokens >= 1, "must be >= 1"),
            ("--temperature", self.temperature >= 0, "must be >= 0"),
            ("--top-p", 0 < self.top_p <= 1, "must be in (0, 1]"),
        )  # fmt: skip
        for key, ok, message in rules:
            if not ok:
                raise ConfigError(key, message)


def generate_samples(
    teacher: torch.nn.Module, blocks: torch.Tensor, s: GenerationSettings
) -> list[dict[str, Any]]:
    """Prompts (first ``s.prompt_tokens`` of training blocks drawn with ``s.seed``; without
    replacement while there are enough blocks) continued by the teacher. Returns one dict per
    sample: ``prompt_ids``, ``ids`` (lists of ints) and ``block`` (its index in ``blocks``)."""
    from attnkd.lm.sampling import sample_continuations

    rng = np.random.default_rng(s.seed)
    n = blocks.shape[0]
    rows = rng.choice(n, size=s.samples, replace=s.samples > n)
    gen = torch.Generator().manual_seed(s.seed)
    out = []
    for start in range(0, s.samples, s.batch_size):
        idx = torch.as_tensor(rows[start : start + s.batch_size], dtype=torch.long)
        prompts = blocks[idx, : s.prompt_tokens]
        cont = sample_continuations(teacher, prompts, s.new_tokens, s.temperature, s.top_p, gen)
        for b, p, c in zip(idx.tolist(), prompts.tolist(), cont.tolist(), strict=True):
            out.append({"prompt_ids": p, "ids": c, "block": b})
    return out


def run_generate_data(
    cfg: DistillConfig,
    settings: GenerationSettings,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Teacher samples for ``cfg``'s causal_lm data into ``out`` (default
    ``{output_dir}/{name}-seqkd``); returns the manifest plus ``path``."""
    from attnkd.data.fingerprint import model_fingerprint, text_fingerprint, tokenizer_fingerprint
    from attnkd.data.lm import lm_texts
    from attnkd.engine.device import resolve_device
    from attnkd.models.load import freeze
    from attnkd.tasks import get_task
    from attnkd.tasks.causal_lm import lm_splits

    if cfg.task != "causal_lm":
        raise ConfigError("task", f"teacher text is generated for 'causal_lm', not {cfg.task!r}")
    settings.check(cfg.data.max_length)
    out = Path(out) if out is not None else Path(cfg.output_dir) / f"{cfg.name}-seqkd"
    if out.exists() and not overwrite:
        raise AttnkdError(f"{out} already exists: pass --overwrite to replace it, or --out")
    loaded = get_task("causal_lm").load(cfg.teacher.name, cfg.teacher.attn_implementation)
    teacher, tok = freeze(loaded.model), loaded.tokenizer
    d = cfg.data
    docs = lm_texts(d.train_sources, d.data_dir, bad_rows=d.bad_rows)
    blocks = lm_splits(cfg, tok).train
    info = {
        "format": FORMAT, "settings": asdict(settings), "teacher_name": cfg.teacher.name,
        "teacher": model_fingerprint(teacher), "tokenizer": tokenizer_fingerprint(tok),
        "sources": list(d.train_sources), "text": text_fingerprint(docs),
        "prompts_from": f"training blocks of {d.max_length} tokens (never select/eval)",
    }  # fmt: skip
    teacher.to(resolve_device(cfg.train.device))
    t0 = time.time()
    samples = generate_samples(teacher, blocks, settings)
    info["seconds"] = time.time() - t0
    with atomic_dir(out) as tmp:
        with open(tmp / SAMPLES, "w", encoding="utf-8") as fh:
            for s in samples:
                text = tok.decode(s["prompt_ids"] + s["ids"], skip_special_tokens=True)
                fh.write(json.dumps({"text": text, **s}) + "\n")
        info.update(samples=len(samples), generated_tokens=len(samples) * settings.new_tokens)
        info["files"] = manifest(tmp, [SAMPLES])
        write_json(tmp / "manifest.json", info)
    return {"path": str(out), **info}
