"""Does a teacher cache fit a run? The run's cache key, the static checks of ``teacher.cache``
and the training batches that carry the cached targets (see :mod:`attnkd.data.teacher_cache`).

``attnkd cache-teacher`` (:mod:`attnkd.lm.cache_run`) and training compute the same
:class:`~attnkd.data.teacher_cache.CacheKey` from the recipe (teacher weights, tokenizer,
source text, the training blocks after the held-out filter, k and τ), so a cache serves
exactly the runs it was made for and refuses the rest.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from attnkd.config.schema import DistillConfig
from attnkd.data.fingerprint import (
    ids_fingerprint,
    model_fingerprint,
    text_fingerprint,
    tokenizer_fingerprint,
)
from attnkd.data.lm import lm_texts
from attnkd.data.teacher_cache import CachedLMBatches, CacheKey, TeacherCache
from attnkd.errors import ConfigError

log = logging.getLogger("attnkd")

__all__ = ["cached_batches", "check_cache_config", "logits_temperature", "run_key"]


def run_key(
    cfg: DistillConfig, teacher: nn.Module, tok: Any, train_blocks: Tensor, k: int, tau: float
) -> CacheKey:
    """The cache key of this run's teacher, tokenizer, text and training blocks."""
    d = cfg.data
    docs = lm_texts(d.train_sources, d.data_dir, bad_rows=d.bad_rows)
    return CacheKey(
        teacher=model_fingerprint(teacher), tokenizer=tokenizer_fingerprint(tok),
        text=text_fingerprint(docs), blocks=ids_fingerprint(train_blocks), k=int(k),
        temperature=float(tau),
    )  # fmt: skip


def logits_temperature(cfg: DistillConfig) -> float:
    """The ``logits`` terms' temperature (the cache's τ); 1 when there is none."""
    temps = {t.temperature for t in cfg.losses if t.name == "logits"}
    return temps.pop() if len(temps) == 1 else 1.0


def check_cache_config(cfg: DistillConfig) -> None:
    """Static checks of ``teacher.cache`` (no models, no checksums): the task, the folder and
    its manifest, and loss terms the cache can serve (only ``logits``, with ``top_k`` = k and
    the cache's temperature). Raises ConfigError."""
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
    tau = logits_temperature(cfg)
    cache.check(run_key(cfg, teacher, tok, train_blocks, cache.k, tau))
    log.info(
        "teacher targets from the cache %s (k=%d): the teacher does not run in training",
        cache.path,
        cache.k,
    )
    return CachedLMBatches(train_blocks, cfg.train.batch_size, cfg.train.seed, cache)
