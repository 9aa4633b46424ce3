"""The staged-run runner: a run is a list of stages, each a normal run in its own folder.

``run_recipe(cfg)`` runs any recipe: a one-stage one through :func:`attnkd.distill.run_distill`,
a staged one (``stages:`` / ``chain:``) through :func:`run_stages`, which reads top to bottom:
resolve the stages (:func:`attnkd.config.stages.stage_plan`), check every one, then run them in
order, each by its kind's runner in ``<run>/stages/NN-<stage>/`` (config, checkpoints, metrics,
``results.json``, exported ``student/``). The student carries from stage to stage through that
export (the next stage's ``student.init``, or its ``teacher.name`` in an assistant chain), so a
resumed run and an uninterrupted one hand over the same weights.

``<run>/stages.json`` (the manifest, written atomically) marks each finished stage; ``--resume``
skips those and continues the interrupted stage from its last step checkpoint. When every stage
is done, the last stage's student is copied to ``<run>/student/`` and ``<run>/results.json``
holds the last stage's results plus every stage's under ``stages``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from attnkd.atomic import atomic_dir, write_json
from attnkd.config.io import dump_yaml, load_config
from attnkd.config.schema import DistillConfig
from attnkd.config.stages import Stage, is_staged, stage_plan
from attnkd.engine import distributed
from attnkd.engine.device import resolve_device
from attnkd.errors import AttnkdError, ConfigError
from attnkd.stages.kinds import KINDS, get_kind
from attnkd.validate import validate

log = logging.getLogger("attnkd")

MANIFEST = "stages.json"


def run_recipe(
    cfg: DistillConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict | None:
    """Run any recipe, staged or not; returns (and writes) its ``results.json`` content."""
    if is_staged(cfg):
        return run_stages(cfg, resume=resume, progress=progress, overwrite=overwrite)
    from attnkd.distill import run_distill

    return run_distill(cfg, resume=resume, progress=progress, overwrite=overwrite)


def check_kinds(plan: list[Stage]) -> None:
    """Every stage names a registered kind (``attnkd ls stages``)."""
    for st in plan:
        if st.kind not in KINDS:
            raise ConfigError(f"stages[{st.index}].kind", f"unknown stage kind '{st.kind}'; "
                              f"known: {', '.join(KINDS.names())}")  # fmt: skip


def run_stages(
    cfg: DistillConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict | None:
    """Run the stages of ``cfg`` in order (see the module docstring).

    Under torchrun every rank runs every stage (each stage as :func:`run_distill` runs under
    torchrun); rank 0 alone writes the manifest and the final export and returns the results,
    the other ranks return None. All ranks wait for rank 0's export of a stage before the next
    stage starts.
    """
    plan = stage_plan(cfg)
    check_kinds(plan)
    validate(cfg)  # every stage, before any model loads
    owns_group = not distributed.current().is_distributed
    # dist: one process group for the whole pipeline, so ranks can wait for each export
    ctx = distributed.init(resolve_device(plan[0].cfg.train.device))
    try:
        return _run_stages(cfg, plan, ctx.is_main, resume, progress, overwrite)
    finally:
        if owns_group:
            distributed.teardown()


def _run_stages(
    cfg: DistillConfig,
    plan: list[Stage],
    is_main: bool,
    resume: bool,
    progress: bool,
    overwrite: bool,
) -> dict | None:
    run_dir = Path(cfg.output_dir) / cfg.name
    manifest_path = run_dir / MANIFEST
    started = manifest_path.exists() or (run_dir / "stages").exists()
    if started and not (resume or overwrite):
        raise AttnkdError(
            f"run folder {run_dir} already holds stages: pass --resume to continue it, "
            "--overwrite to start again, or set name=<new name>"
        )
    if resume and not (run_dir / "config.yaml").exists():
        raise ConfigError("name", f"--resume: there is no run at {run_dir} (no config.yaml); "
                          "check name= and output_dir=, or drop --resume to start it")  # fmt: skip
    done = _read_manifest(manifest_path, plan) if resume else set()
    distributed.barrier()  # dist: every rank has read the run folder before rank 0 writes
    if is_main:
        if overwrite and not resume:
            _clear(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
        _write_manifest(manifest_path, cfg, plan, done)

    per_stage: list[dict | None] = []
    for st in plan:
        finished = st.folder in done and (st.run_dir / "results.json").is_file()
        if finished:
            log.info("stage %d/%d '%s': done, skipped", st.index + 1, len(plan), st.name)
            _warn_if_changed(st)
            res = json.loads((st.run_dir / "results.json").read_text(encoding="utf-8"))
        else:
            log.info("stage %d/%d '%s' (%s) in %s", st.index + 1, len(plan), st.name, st.kind,
                     st.run_dir)  # fmt: skip
            # resume inside the stage only if it got as far as training (metrics written)
            inside = resume and (st.run_dir / "metrics.jsonl").is_file()
            distributed.barrier()  # dist: every rank has looked before the stage (re)starts
            res = get_kind(st.kind).run(st.cfg, inside, progress, not inside)
            distributed.barrier()  # dist: rank 0 has exported the stage's student
            if is_main:
                _check_stage_output(st, res)
                done.add(st.folder)
                _write_manifest(manifest_path, cfg, plan, done)
        per_stage.append(res)
    if not is_main:
        return None
    last = plan[-1]
    with atomic_dir(run_dir / "student") as tmp:  # the final export: the last stage's student
        shutil.copytree(last.run_dir / "student", tmp, dirs_exist_ok=True)
    results = _pipeline_results(cfg, plan, per_stage)
    write_json(run_dir / "results.json", results, default=str)
    return results


def _check_stage_output(st: Stage, res: dict | None) -> None:
    if res is None:
        raise AttnkdError(f"stage '{st.name}' ({st.kind}) returned no results")
    if not (st.run_dir / "student").is_dir():
        raise AttnkdError(
            f"stage '{st.name}' ({st.kind}) exported no student to {st.run_dir / 'student'}"
        )


def _pipeline_results(cfg: DistillConfig, plan: list[Stage], per_stage: list[dict]) -> dict:
    """The last stage's results (its evaluation of the final student) plus every stage's."""
    final = per_stage[-1]
    out = {"name": cfg.name, "task": cfg.task, "final_stage": plan[-1].name}
    out.update({k: v for k, v in final.items() if k not in ("name", "task", "train")})
    out["stages"] = [
        {"stage": st.name, "kind": st.kind, "carry": st.carry,
         "folder": f"stages/{st.folder}", "results": res}
        for st, res in zip(plan, per_stage, strict=True)
    ]  # fmt: skip
    trains = [res.get("train", {}) for res in per_stage]
    out["train"] = {
        "stages": len(plan),
        "steps": sum(int(t.get("steps", 0) or 0) for t in trains),
        "seconds_this_session": sum(float(t.get("seconds_this_session", 0) or 0) for t in trains),
    }
    return out


def _warn_if_changed(st: Stage) -> None:
    """A finished stage is kept as it ran; say so when the recipe now resolves it otherwise."""
    try:
        ran = load_config(st.run_dir / "config.yaml")
    except ConfigError:
        ran = None
    if ran != st.cfg:
        log.warning("stage '%s' finished with other settings than the recipe now gives; it is "
                    "kept as it ran (--overwrite runs every stage again)", st.name)  # fmt: skip


def _read_manifest(path: Path, plan: list[Stage]) -> set[str]:
    """The folders of finished stages; refuses a manifest whose stages are not this plan's."""
    if not path.is_file():
        return set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["stages"]
        folders = [e["folder"] for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        msg = f"{path}: unreadable stage manifest ({err}); rerun with --overwrite"
        raise AttnkdError(msg) from None
    if folders != [st.folder for st in plan]:
        raise AttnkdError(
            f"{path}: the run's stages were {folders}, the recipe now gives "
            f"{[st.folder for st in plan]}; rerun with --overwrite or set name=<new name>"
        )
    return {e["folder"] for e in entries if e.get("done")}


def _write_manifest(path: Path, cfg: DistillConfig, plan: list[Stage], done: set[str]) -> None:
    stages = [
        {"index": st.index, "stage": st.name, "kind": st.kind, "carry": st.carry,
         "folder": st.folder, "done": st.folder in done}
        for st in plan
    ]  # fmt: skip
    write_json(path, {"name": cfg.name, "updated": time.time(), "stages": stages})


def _clear(run_dir: Path) -> None:
    """``--overwrite``: remove what an earlier staged run left, so nothing stale is reported."""
    for name in ("stages", "student"):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
    for name in (MANIFEST, "results.json"):
        if (run_dir / name).exists():
            (run_dir / name).unlink()


__all__ = ["MANIFEST", "check_kinds", "run_recipe", "run_stages"]
