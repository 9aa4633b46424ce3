"""``attnkd repro RECIPE --seeds N``: run a recipe under several seeds, report mean ± std.

Each seed is a normal run (staged or not) named ``<name>-seed<S>`` with ``train.seed = S`` (a
stage that sets its own ``train.seed`` keeps it). Every numeric leaf of the runs'
``results.json`` (dotted keys, stages by name; the ``train`` bookkeeping left out) is gathered
into ``repro.json``: values in seed order, mean, sample standard deviation (n − 1; null for one
seed) and n, with the wall time of this invocation; a markdown table is printed. ``--resume``
skips seeds whose run finished (``results.json`` present) and continues an interrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from attnkd.atomic import write_json
from attnkd.config.schema import DistillConfig
from attnkd.errors import ConfigError
from attnkd.stages import run_recipe

log = logging.getLogger("attnkd")

SKIPPED = ("train", "held_out")
"""Sections of results.json that are bookkeeping, not metrics."""

__all__ = ["MetricSummary", "flatten_metrics", "markdown_table", "run_repro", "summarise"]


@dataclass
class MetricSummary:
    """One metric over the seeds."""

    values: list[float]
    mean: float
    std: float | None
    """Sample standard deviation (n − 1); None for a single value."""
    n: int

    def to_dict(self) -> dict:
        return {"values": self.values, "mean": self.mean, "std": self.std, "n": self.n}


def flatten_metrics(results: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a results dict by dotted key (booleans and ``train`` left out); a list
    of stages is keyed by stage name (``stages.general.student.spearman``)."""
    out: dict[str, float] = {}
    for key, value in results.items():
        if key in SKIPPED:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, list) and key == "stages":
            for i, st in enumerate(value):
                if isinstance(st, dict):
                    label = st.get("stage", str(i))
                    out.update(flatten_metrics(st.get("results", {}), f"{name}.{label}."))
    return out


def summarise(per_seed: list[dict[str, float]]) -> dict[str, MetricSummary]:
    """Mean and sample std of every metric present in all runs (keys in first-run order)."""
    keys = [k for k in per_seed[0] if all(k in m for m in per_seed)] if per_seed else []
    out = {}
    for k in keys:
        values = [m[k] for m in per_seed]
        n = len(values)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        out[k] = MetricSummary(values, mean, std, n)
    return out


def markdown_table(summary: dict[str, MetricSummary], keys: list[str] | None = None) -> str:
    """``| metric | mean ± std | n | values |`` rows (all metrics, or ``keys``)."""
    rows = ["| metric | mean ± std | n | values |", "|---|---|---|---|"]
    for k in keys or list(summary):
        s = summary[k]
        spread = "" if s.std is None else f" ± {_fmt(s.std)}"
        values = ", ".join(_fmt(v) for v in s.values)
        rows.append(f"| {k} | {_fmt(s.mean)}{spread} | {s.n} | {values} |")
    return "\n".join(rows)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"


def seed_config(cfg: DistillConfig, seed: int) -> DistillConfig:
    """``cfg`` as the run of one seed: name ``<name>-seed<seed>``, ``train.seed = seed``."""
    return replace(cfg, name=f"{cfg.name}-seed{seed}", train=replace(cfg.train, seed=seed))


def run_repro(
    cfg: DistillConfig,
    seeds: list[int],
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    json_path: str | Path | None = None,
    command: str = "",
) -> dict:
    """Run ``cfg`` once per seed and write ``repro.json`` (default
    ``<output_dir>/<name>-repro.json``); returns its content (plus the markdown ``table``)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds", f"needs at least one seed, all distinct; got {seeds}")
    t0 = time.monotonic()
    runs, per_seed, seconds = [], [], []
    for seed in seeds:
        scfg = seed_config(cfg, seed)
        run_dir = Path(scfg.output_dir) / scfg.name
        s0 = time.monotonic()
        if resume and (run_dir / "results.json").is_file():
            log.info("seed %d: finished run %s, skipped", seed, run_dir)
            results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
            seconds.append(None)
        else:
            started = (run_dir / "config.yaml").is_file()
            results = run_recipe(scfg, resume=resume and started, progress=progress,
                                 overwrite=overwrite or (resume and not started))  # fmt: skip
            seconds.append(time.monotonic() - s0)
        runs.append(str(run_dir))
        per_seed.append(flatten_metrics(results))
    summary = summarise(per_seed)
    out = {
        "recipe": cfg.name,
        "command": command,
        "seeds": seeds,
        "runs": runs,
        "metrics": {k: s.to_dict() for k, s in summary.items()},
        "std": "sample standard deviation (n - 1)",
        "wall_seconds": time.monotonic() - t0,
        "seconds_per_seed": seconds,
    }
    path = Path(json_path) if json_path else Path(cfg.output_dir) / f"{cfg.name}-repro.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)
    out["table"] = markdown_table(summary)
    out["json"] = str(path)
    return out
