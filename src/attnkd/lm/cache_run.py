"""``attnkd cache-teacher``: one teacher pass over a recipe's training blocks into a cache.

The cache format and reader are :mod:`attnkd.data.teacher_cache`; the key that ties a cache to
a run, and the checks training makes, are :mod:`attnkd.data.cache_match`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnkd.config.schema import DistillConfig
from attnkd.data.cache_match import logits_temperature, run_key
from attnkd.data.teacher_cache import write_cache
from attnkd.errors import AttnkdError, ConfigError

__all__ = ["default_cache_dir", "run_cache_teacher"]


def default_cache_dir(cfg: DistillConfig, k: int) -> Path:
    """``{output_dir}/{name}-cache-k{k}``."""
    return Path(cfg.output_dir) / f"{cfg.name}-cache-k{k}"


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
    tau = logits_temperature(cfg)
    key = run_key(cfg, teacher, tok, splits.train, k, tau)
    teacher.to(resolve_device(cfg.train.device))
    meta = {"teacher_name": cfg.teacher.name, "sources": list(cfg.data.train_sources)}
    info = write_cache(teacher, splits.train, out, key, dtype=dtype, batch_size=batch_size,
                       meta=meta, progress=progress)  # fmt: skip
    return {"path": str(out), **info}
