"""Strategies made of several runs: self-distillation generations and data partitions.

Each generation or part is an ordinary run folder (``<name>-gen<g>``, ``<name>-part<j>``) run by
the recipe runner; a summary (``generations.json`` / ``partitions.json``) is written atomically
under ``<output_dir>/<name>/``. A finished run (its ``results.json`` exists) is skipped unless
``overwrite``; with ``resume`` the interrupted one continues from its checkpoint.

Note: the project's stage mechanism (``stages:``) is being built in parallel; generations are
chained runs here so that each can become a stage whose teacher is the previous stage's export.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from attnkd.atomic import write_json
from attnkd.config.schema import DistillConfig

log = logging.getLogger("attnkd")

__all__ = ["generation_configs", "partition_configs", "run_chain"]


def generation_configs(cfg: DistillConfig) -> list[DistillConfig]:
    """One config per generation: generation 0 is ``cfg`` as written; generation g >= 1 has
    generation g-1's exported student as its only teacher and the top-level ``losses``."""
    out = []
    for g in range(cfg.strategy.generations):
        c = replace(cfg, name=f"{cfg.name}-gen{g}",
                    strategy=replace(cfg.strategy, generations=1))  # fmt: skip
        if g > 0:
            prev = Path(cfg.output_dir) / out[-1].name / "student"
            c = replace(c, teacher=replace(cfg.teacher, name=str(prev), recipe=""), teachers=[])
        out.append(c)
    return out


def partition_configs(cfg: DistillConfig) -> list[DistillConfig]:
    """One config per data part: ``<name>-part<j>`` trains on part j of ``strategy.partitions``."""
    return [
        replace(cfg, name=f"{cfg.name}-part{j}", strategy=replace(cfg.strategy, part=j))
        for j in range(cfg.strategy.partitions)
    ]


def run_chain(
    cfg: DistillConfig,
    configs: list[DistillConfig],
    kind: str,
    run_one: Callable[..., dict | None],
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Run ``configs`` in order with ``run_one`` (the recipe runner); write
    ``{"name", kind: [{"run", "teacher", "results"}, ...]}`` and return the last run's results
    with that list under ``kind`` (so a caller reading one run's results still can)."""
    entries = []
    for c in configs:
        run_dir = Path(c.output_dir) / c.name
        done = run_dir / "results.json"
        if done.is_file() and not overwrite:
            log.info("%s: %s already finished, skipped", kind, c.name)
            results = json.loads(done.read_text())
        else:
            again = resume and (run_dir / "config.yaml").is_file()
            log.info("%s: running %s", kind, c.name)
            results = run_one(c, resume=again, progress=progress, overwrite=overwrite)
        teacher = [e.name for e in c.teachers] if c.teachers else c.teacher.name
        entries.append({"run": c.name, "teacher": teacher, "results": results})
    summary = {"name": cfg.name, kind: entries}
    out = Path(cfg.output_dir) / cfg.name / f"{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, summary)
    return {**(entries[-1]["results"] or {}), kind: entries}
