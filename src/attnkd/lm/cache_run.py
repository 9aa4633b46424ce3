"""The teacher cache in a run: ``attnkd cache-teacher`` writes it, ``teacher.cache`` reads it.

Both sides compute the same :class:`~attnkd.lm.cache.CacheKey` from the recipe (teacher
weights, tokenizer, source text, the training blocks after the held-out filter, k and τ), so
a cache serves exactly the runs it was made for and refuses the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from attnkd.config.schema import DistillConfig
from attnkd.errors import AttnkdError, ConfigError
from attnkd.lm.cache import CachedLMBatches, CacheKey, TeacherCache, write_cache
from attnkd.lm.fingerprint import (
    ids_fingerprint,
    model_fingerprint,
    text_fingerprint,
    tokenizer_fingerprint,
)

log = logging.getLogger("attnkd")

__all__ = [
    "cached_batches",
    "check_cache_config",
    "default_cache_dir",
    "run_cache_teacher",
    "run_key",
]


def run_key(
    cfg: DistillConfig, teacher: nn.Module, tok: Any, train_blocks: Tensor, k: int, tau: float
) -> CacheKey:
    """The cache key of this run's teacher, tokenizer, text and training blocks."""
    from attnkd.data.lm import lm_texts

    d = cfg.data
    docs = lm_texts(d.train_sources, d.data_dir, bad_rows=d.bad_rows)
    return CacheKey(
        teacher=model_fingerprint(teacher), tokenizer=tokenizer_fingerprint(tok),
        text=text_fingerprint(docs), blocks=ids_fingerprint(train_blocks), k=int(k),
        temperature=float(tau),
    )  # fmt: skip


def default_cache_dir(cfg: DistillConfig, k: int) -> Path:
    return Path(cfg.output_dir) / f"{cfg.name}-cache-k{k}"


def _logits_temperature(cfg: DistillConfig) -> float:
    temps = {t.temperature for t in cfg.losses if t.name == "logits"}
    return temps.pop() if len(temps) == 1 else 1.0


def run_cache_teacher(
    cfg: DistillConfig,
    k: int,
    out: str | Path | None = None,
    dtype: str = "fp16",
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """One teacher pass over the recipe's training blocks into a cache folder (default
    ``{output_dir}/{name}-cache-k{k}``); τ is the recipe's ``logits`` term temperature (1 if
    none). Returns the manifest (with ``path``)."""
    from attnkd.engine.device import resolve_device, teacher_dtype_of
    from attnkd.models.load import freeze
    from attnkd.tasks import get_task
    from attnkd.tasks.causal_lm import lm_splits

    if cfg.task != "causal_lm":
        raise ConfigError("task", f"a teacher cache is for task 'causal_lm', not {cfg.task!r}")
    if k < 1:
        raise ConfigError("--top-k", f"must be >= 1, got {k}")
    out = Path(out) if out is not None else default_cache_dir(cfg, k)
    if out.exists() and not overwrite:
        raise AttnkdError(f"{out} already exists: pass --overwrite to rebuild it, or --out")
    task = get_task("causal_lm")
    loaded = task.load(cfg.teacher.name, cfg.teacher.attn_implementation)
    teacher, tok = freeze(loaded.model), loaded.tokenizer
    teacher.to(dtype=teacher_dtype_of(cfg.train))
    splits = lm_splits(cfg, tok)
    tau = _logits_temperature(cfg)
    key = run_key(cfg, teacher, tok, splits.train, k, tau)
    teacher.to(resolve_device(cfg.train.device))
    meta = {"teacher_name": cfg.teacher.name, "sources": list(cfg.data.train_sources)}
    info = write_cache(teacher, splits.train, out, key, dtype=dtype, batch_size=batch_size,
                       meta=meta, progress=progress)  # fmt: skip
    return {"path": str(out), **info}


def check_cache_config(cfg: DistillConfig) -> None:
    """Static checks of ``teacher.cache`` (no models, no checksums): the task, the folder and
    its manifest, and loss terms the cache can serve (only ``logits``, with ``top_k`` = k and
    the cache's temperature). Raises ConfigError."""
    import json

    path = Path(cfg.teacher.cache)
    if cfg.task != "causal_lm":
        raise ConfigError(
            "teacher.cache", f"a teacher cache serves task 'causal_lm', not {cfg.task!r}"
        )
    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        k, tau = int(m["k"]), float(m["temperature"])
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(
            "teacher.cache",
            f"{path} is not a readable teacher cache ({err}); make one with "
            "'attnkd cache-teacher RECIPE --top-k K'",
        ) from err
    for i, term in enumerate(cfg.losses):
        if term.name != "logits":
            raise ConfigError(
                f"losses[{i}].name",
                f"teacher.cache serves only the 'logits' term; {term.name!r} needs the live "
                "teacher's activations (remove teacher.cache or the term)",
            )
        if term.top_k != k:
            raise ConfigError(
                f"losses[{i}].top_k",
                f"must equal the cache's k = {k} (top-k + tail-bucket loss, see "
                f"attnkd.losses.topk), got {term.top_k}",
            )
        if term.temperature != tau:
            raise ConfigError(
                f"losses[{i}].temperature",
                f"must equal the cache's temperature {tau} (its log-probs are at that "
                f"temperature), got {term.temperature}",
            )


def cached_batches(
    cfg: DistillConfig, teacher: nn.Module, tok: Any, train_blocks: Tensor
) -> CachedLMBatches:
    """Batches of ``train_blocks`` carrying targets from ``cfg.teacher.cache``, after checking
    that the cache was made for this run and that every loss term can be served from it."""
    check_cache_config(cfg)
    cache = TeacherCache(cfg.teacher.cache)
    tau = _logits_temperature(cfg)
    cache.check(run_key(cfg, teacher, tok, train_blocks, cache.k, tau))
    log.info(
        "teacher targets from the cache %s (k=%d): the teacher does not run in training",
        cache.path,
        cache.k,
    )
    return CachedLMBatches(train_blocks, cfg.train.batch_size, cfg.train.seed, cache)
