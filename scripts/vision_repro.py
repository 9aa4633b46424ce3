"""Reproduce the Fashion-MNIST figures of the image_classification task and write the tables.

    python scripts/vision_repro.py run  [--seeds 0 1 2] [--parallel 2] [--parts ...]  # skips done
    python scripts/vision_repro.py tables                                  # results/vision_*.json

``run`` calls the attnkd CLI with one thread per process (``OMP_NUM_THREADS=1``: on 2 cores, two
1-thread runs side by side train faster than one 2-thread run): the teacher recipe, then the
five CNN students and the two ViT variants for every seed, pruning (``attnkd prune``) with CE and
AT recovery, and ``attnkd condense`` for three methods at 1/10/50 images per class (one condensed
set each, judged by three ConvNet-3 seeds).
``tables`` reads only results.json files the runs wrote (a cell without one is reported
missing, never filled in): test accuracy mean ± std over the seeds found, parameters, and each
run's training wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from vision_condense import (
    MORE,
    SENSITIVITY,
    _stats,
    final_cells,
    final_jobs,
    select_jobs,
    selection_table,
    sensitivity_jobs,
)
from vision_condense_choice import (
    RULE,
    budget_jobs,
    budget_table,
    choose,
    chosen_cells,
    headline,
    improve_candidates,
    improve_jobs,
    improve_table,
    more_jobs,
)

from attnkd.errors import AttnkdError

STUDENTS = ["scratch", "kd", "at", "kd-at", "rkd", "vit-deit", "vit-deit-soft"]
CONDENSE = {"methods": ["datadam", "dm", "random"], "ipc": [1, 10, 50]}
CONDENSE_LONG = {"methods": ["datadam", "dm"], "ipc": [1], "iterations": 1000, "judge_steps": 300}
"""A longer matching budget at 1 image per class (runs/condense-1000)."""
JUDGE_SEEDS = ["0", "1", "2"]
"""Every condensed set (condensation seed 0) is judged by three fresh ConvNet-3s."""
LIMITED = {"images": 2000, "steps": 1500, "eval_every": 300}
"""The data-limited regime: the students see a class-balanced 2000 of the training images
(data.max_images; 200 per class, seeded by train.seed) for 1500 steps of 128 (96 epochs), the
best of 5 evaluations on the (full) validation split kept.
Runs fmnist-lim<images>-<label>-s<seed>."""
LIMITED_GRID = {"p300": ("at", 150.0, (0, 1, 2)), "p1000": ("at", 500.0, (0, 1, 2)),
                "g300": ("at_group", 150.0, (0, 1, 2))}  # fmt: skip
"""AT settings compared on validation (seed 0) in the data-limited regime: the full-data recipe's
β = 300 on the pooled maps, the authors' β = 1000 (AT as a stronger regulariser where data is
scarce), and β = 300 on the maps before pooling (at_group)."""
RUNS = Path("runs")
PARTS = ["teacher", "students", "vit", "condense", "prune", "at-select", "students-3000",
         "condense-long", "teacher-seeds", "limited-select", "limited", "condense-select",
         "condense-final", "condense-w100", "condense-improve", "condense-more",
         "condense-budget"]  # fmt: skip
TEACHER_SEEDS = (1, 2)
"""More seeds of the teacher recipe, one after the other (runs fmnist-teacher-s<seed>; seed 0 is
runs/fmnist-teacher). A run stopped by SIGTERM has saved a checkpoint and continues from it."""
LONG_STEPS = 3000
"""The longer student budget (twice the recipes' 1500 steps): runs fmnist-<r>-3000-s<seed>."""
AT_GRID = {"p300": ("at", 150.0, (0, 1, 2)), "g300": ("at_group", 150.0, (0, 1, 2)),
           "p100": ("at", 50.0, (0, 1, 2))}  # fmt: skip
"""AT settings compared on the validation split (seed 0, 3000 steps): maps of the pooled stage
outputs ('at') or of each group's last conv block before its pooling ('at_group', the paper's
placement), β = 300 or 100 (weight β/2 per stage), at the given stages. Runs
fmnist-at-<label>-3000-s<seed>."""


def _cli(args: list[str], log: Path) -> int:
    env = {**os.environ, "PYTHONPATH": "src", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "attnkd", *args]
    with log.open("w") as f:
        return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def _done(name: str) -> bool:
    return (RUNS / name / "results.json").is_file()


def _prune_chain(logs: Path) -> None:
    """Prune the teacher, then score it unrecovered and recover it with CE and with CE + AT."""
    pruned = "runs/fmnist-teacher-pruned"
    if not Path(pruned).is_dir():
        _cli(["prune", "runs/fmnist-teacher/student", pruned, "--ratio", "0.5"], logs / "prune.log")
    for name, extra in (("fmnist-prune-none", ["train.max_steps=0"]),
                        ("fmnist-prune-ce", ["losses=[{name: ce}]"]),
                        ("fmnist-prune-at", [])):  # fmt: skip
        if not _done(name):
            args = ["distill", "recipes/fmnist-prune-at.yaml", f"name={name}", *extra]
            _cli([*args, "--no-progress", "--overwrite"], logs / f"{name}.log")


def _at_chosen() -> str | None:
    """The AT_GRID setting with the best validation accuracy among its finished seed-0 runs (the
    first on a tie; None before any finished): its seeds make the 3000-step AT row."""
    best = None
    for label in AT_GRID:
        r = _read(RUNS / f"fmnist-at-{label}-{LONG_STEPS}-s0" / "results.json")
        if r and (best is None or r["student"]["select_accuracy"] > best[1]):
            best = (label, r["student"]["select_accuracy"])
    return best[0] if best else None


def _at_losses(label: str, grid: dict | None = None) -> str:
    """The ``losses=`` override of one AT_GRID (or ``grid``) setting: CE + AT at its stages."""
    term, weight, at = (grid or AT_GRID)[label]
    stages = ", ".join(f"{{name: {term}, weight: {weight}, teacher_layer: {i}, student_layer: {i}}}"
                       for i in at)  # fmt: skip
    return f"losses=[{{name: ce}}, {stages}]"


def run(seeds: list[int], parallel: int, condense_iterations: dict[int, int],
        judge_steps: dict[int, int], parts: list[str], methods: list[str] | None = None,
        condense_ipc: list[int] | None = None) -> None:  # fmt: skip
    """Teacher first, then ``parallel`` lanes take, in order: the students (seed by seed), the
    AT selection and the 3000-step students, the pruning chain, the condensation cells (size by
    size; ``methods``/``condense_ipc`` restrict them)."""
    methods = methods or CONDENSE["methods"]
    condense_ipc = condense_ipc or CONDENSE["ipc"]
    logs = RUNS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if "teacher" in parts and not _done("fmnist-teacher"):
        _cli(["distill", "recipes/fmnist-teacher.yaml", "--no-progress"], logs / "teacher.log")
    for seed in TEACHER_SEEDS if "teacher-seeds" in parts else ():
        name = f"fmnist-teacher-s{seed}"
        if not _done(name):  # a run stopped early (SIGTERM saves a checkpoint) continues
            again = "--resume" if (RUNS / name / "checkpoints" / "last").is_dir() else "--overwrite"
            args = ["distill", "recipes/fmnist-teacher.yaml", f"name={name}", f"train.seed={seed}",
                    "--no-progress", again]  # fmt: skip
            _cli(args, logs / f"{name}.log")
    jobs = []
    for seed in seeds:
        for s in STUDENTS:
            name = f"fmnist-{s}-s{seed}"
            if ("vit" if s.startswith("vit") else "students") in parts and not _done(name):
                args = ["distill", f"recipes/fmnist-{s}.yaml", f"name={name}",
                        f"train.seed={seed}", "--no-progress", "--overwrite"]  # fmt: skip
                jobs.append(lambda a=args, n=name: _cli(a, logs / f"{n}.log"))
    long = [f"train.max_steps={LONG_STEPS}", f"train.eval_every={LONG_STEPS}",
            f"train.save_every={LONG_STEPS}", "--no-progress", "--overwrite"]  # fmt: skip
    for label in AT_GRID if "at-select" in parts else []:
        name = f"fmnist-at-{label}-{LONG_STEPS}-s0"
        if not _done(name):
            args = ["distill", "recipes/fmnist-at.yaml", f"name={name}", "train.seed=0",
                    _at_losses(label), *long]  # fmt: skip
            jobs.append(lambda a=args, n=name: _cli(a, logs / f"{n}.log"))
    chosen = _at_chosen()  # the AT selection runs first (run at-select, then students-3000)
    for seed in seeds if "students-3000" in parts else []:
        for r in ("scratch", "at", "kd-at") if chosen else ("scratch", "kd-at"):
            label = f"at-{chosen}" if r == "at" else r
            name = f"fmnist-{label}-{LONG_STEPS}-s{seed}"
            if not _done(name):
                extra = [_at_losses(chosen)] if r == "at" else []
                args = ["distill", f"recipes/fmnist-{r}.yaml", f"name={name}",
                        f"train.seed={seed}", *extra, *long]  # fmt: skip
                jobs.append(lambda a=args, n=name: _cli(a, logs / f"{n}.log"))
    jobs += _limited_jobs(seeds, parts, logs)
    if "prune" in parts:
        jobs.append(lambda: _prune_chain(logs))
    for ipc in condense_ipc:
        for m in methods:
            folder = RUNS / "condense" / f"condense-{m}-ipc{ipc}-s0"
            if "condense" in parts and not (folder / "results.json").is_file():
                args = ["condense", "--method", m, "--ipc", str(ipc), "--seeds", "0",
                        "--iterations", str(condense_iterations[ipc]), "--real-batch", "32",
                        "--eval-steps", str(judge_steps[ipc]), "--judge-seeds", *JUDGE_SEEDS,
                        "--out", str(RUNS / "condense")]  # fmt: skip
                log = logs / f"condense-{m}-{ipc}-0.log"
                jobs.append(lambda a=args, f=log: _cli(a, f))
    long_dir = RUNS / f"condense-{CONDENSE_LONG['iterations']}"
    for ipc in CONDENSE_LONG["ipc"] if "condense-long" in parts else []:
        for m in CONDENSE_LONG["methods"]:
            if not (long_dir / f"condense-{m}-ipc{ipc}-s0" / "results.json").is_file():
                args = ["condense", "--method", m, "--ipc", str(ipc), "--seeds", "0",
                        "--iterations", str(CONDENSE_LONG["iterations"]), "--real-batch", "32",
                        "--eval-steps", str(CONDENSE_LONG["judge_steps"]), "--judge-seeds",
                        *JUDGE_SEEDS, "--out", str(long_dir)]  # fmt: skip
                log = logs / f"condense-long-{m}-{ipc}-0.log"
                jobs.append(lambda a=args, f=log: _cli(a, f))
    if "condense-select" in parts:
        jobs += select_jobs(_cli, logs)
    if "condense-final" in parts:
        jobs += final_jobs(_cli, logs, methods, condense_ipc)
    if "condense-w100" in parts:
        jobs += sensitivity_jobs(_cli, logs, [i for i in SENSITIVITY["sizes"] if i in condense_ipc])
    if "condense-improve" in parts:  # the screen; once adopted (run again), its other seeds
        jobs += improve_jobs(_cli, logs, _read)
    if "condense-more" in parts:  # MORE's seeds, at the settings chosen on FINAL's
        jobs += more_jobs(_cli, logs, _read, improve_candidates(_read))
    if "condense-budget" in parts:  # longer matching, seed 0, scored on validation only
        jobs += budget_jobs(_cli, logs, _read)
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda job: job(), jobs))


def _limited_name(label: str, seed: int) -> str:
    return f"fmnist-lim{LIMITED['images']}-{label}-s{seed}"


def _limited_chosen() -> str | None:
    """The LIMITED_GRID setting with the best validation accuracy among its finished seed-0 runs
    (the first on a tie; None before any finished)."""
    best = None
    for label in LIMITED_GRID:
        r = _read(RUNS / _limited_name(label, 0) / "results.json")
        if r and (best is None or r["student"]["select_accuracy"] > best[1]):
            best = (label, r["student"]["select_accuracy"])
    return best[0] if best else None


def _limited_args(label: str, seed: int) -> list[str]:
    """``attnkd distill`` arguments of one data-limited run: 'scratch', 'kd-at' (its recipe) or
    an AT setting of LIMITED_GRID (fmnist-at.yaml with its losses)."""
    recipe = {"scratch": "scratch", "kd-at": "kd-at"}.get(label, "at")
    extra = [] if recipe != "at" else [_at_losses(label, LIMITED_GRID)]
    steps, every = LIMITED["steps"], LIMITED["eval_every"]
    return ["distill", f"recipes/fmnist-{recipe}.yaml", f"name={_limited_name(label, seed)}",
            f"train.seed={seed}", f"data.max_images={LIMITED['images']}",
            f"train.max_steps={steps}", f"train.eval_every={every}", f"train.save_every={steps}",
            *extra, "--no-progress", "--overwrite"]  # fmt: skip


def _limited_jobs(seeds: list[int], parts: list[str], logs: Path) -> list:
    """'limited-select': scratch and every LIMITED_GRID setting at seed 0 (choose on validation);
    'limited': scratch and the chosen AT setting at every seed, then KD + AT at every seed."""
    labels = []
    if "limited-select" in parts:
        labels += [("scratch", 0)] + [(label, 0) for label in LIMITED_GRID]
    chosen = _limited_chosen()
    if "limited" in parts and chosen:
        pairs = [(label, seed) for seed in seeds for label in ("scratch", chosen)]
        labels += pairs + [("kd-at", seed) for seed in seeds]  # the twins first, then KD + AT
    jobs, seen = [], set()
    for label, seed in labels:
        name = _limited_name(label, seed)
        if name not in seen and not _done(name):
            seen.add(name)
            args = _limited_args(label, seed)
            jobs.append(lambda a=args, n=name: _cli(a, logs / f"{n}.log"))
    return jobs


def _wall(run: Path) -> float | None:
    """Training wall time over all sessions of a run: the last 'stop' event's elapsed_s."""
    f = run / "metrics.jsonl"
    if not f.is_file():
        return None
    stops = [json.loads(x) for x in f.read_text().splitlines() if '"event": "stop"' in x]
    return stops[-1]["elapsed_s"] if stops else None


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def tables(out: Path, condense_only: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if condense_only:  # a checkout holding only the condensation runs leaves the rest alone
        _condense_table(out)
        return
    rows = {}
    teacher = _teacher_row()
    if teacher:
        rows["teacher"] = teacher
    for s in STUDENTS:
        rows[s] = _seed_rows(f"fmnist-{s}", f"recipes/fmnist-{s}.yaml")
    _long_tables(out)
    _limited_tables(out)
    _write(out / "vision_fmnist.json", {
        "what": "Fashion-MNIST test accuracy (10k), mean/std over seeds; only runs that finished",
        "command": "python scripts/vision_repro.py run && python scripts/vision_repro.py tables",
        "wall_time": "train_seconds: each run's training wall time on the shared 2-core machine, "
                     "one thread per run, under load from other agents' jobs",
        "under_load": True, "rows": _carry(out / "vision_fmnist.json", "rows", rows),
        "at_weight_selection": _at_selection() or (_read(out / "vision_fmnist.json") or {}).get(
            "at_weight_selection", {}),  # the runs of an earlier session: as committed
    })  # fmt: skip
    _condense_table(out)
    prune = {}
    for name in ("fmnist-teacher", "fmnist-prune-none", "fmnist-prune-ce", "fmnist-prune-at"):
        r = _read(RUNS / name / "results.json")
        if r:
            prune[name] = {"accuracy": r["student"]["accuracy"], "params": r["student"]["params"],
                           "train_seconds": r["train"]["seconds_this_session"]}  # fmt: skip
    _write(out / "vision_prune.json", {
        "what": "unpruned teacher vs 50% channel-pruned (BN scale): no recovery, CE, CE+AT",
        "command": "python scripts/vision_repro.py run && python scripts/vision_repro.py tables",
        "under_load": True, "rows": _carry(out / "vision_prune.json", "rows", prune),
    })  # fmt: skip


def _teacher_row() -> dict | None:
    """The teacher recipe over its seeds: seed 0 is runs/fmnist-teacher (the teacher every student
    learns from), seeds 1-2 runs/fmnist-teacher-s<seed> (part teacher-seeds)."""
    found = [(0, RUNS / "fmnist-teacher")] + [(s, RUNS / f"fmnist-teacher-s{s}")
                                               for s in TEACHER_SEEDS]  # fmt: skip
    found = [(seed, p, _read(p / "results.json")) for seed, p in found]
    found = [(seed, p, r) for seed, p, r in found if r]
    if not found:
        return None
    acc = [r["student"]["accuracy"] for _, _, r in found]
    secs = [r["train"]["seconds_this_session"] for _, _, r in found]
    return {
        "recipe": "recipes/fmnist-teacher.yaml", "runs": [p.name for _, p, _ in found],
        "seeds": [seed for seed, _, _ in found], "accuracy": acc, **_stats(acc),
        "params": found[0][2]["student"]["params"],
        "val_accuracy": [r["student"].get("select_accuracy") for _, _, r in found],
        "steps": [r["train"]["steps"] for _, _, r in found], "train_seconds": secs,
        "train_seconds_mean": statistics.fmean(secs),
        "train_wall_seconds_all_sessions": [_wall(p) for _, p, _ in found],
        "command_more_seeds": "python scripts/vision_repro.py run --parts teacher-seeds "
                              "--parallel 1 (attnkd distill recipes/fmnist-teacher.yaml "
                              "name=fmnist-teacher-s<seed> train.seed=<seed> --no-progress "
                              "--overwrite; seed 0 is runs/fmnist-teacher)",
        "under_load_more_seeds": "one thread each; seed 1 ran at nice 15 beside 4-6 other jobs on "
                                 "the 2 cores, was stopped at step 4305 (SIGTERM checkpoint) and "
                                 "resumed (train_seconds is the resumed part only); seed 2 ran "
                                 "beside seed 1's resumed part and 2-4 other jobs",
        "unfinished": [_unfinished(RUNS / f"fmnist-teacher-s{s}") for s in TEACHER_SEEDS
                       if not _done(f"fmnist-teacher-s{s}")
                       and (RUNS / f"fmnist-teacher-s{s}").is_dir()],
    }  # fmt: skip


def _unfinished(run: Path) -> dict:
    """A run stopped before its last step: the step of its last checkpoint (where --resume
    continues), the step it stopped at and its training seconds at the last logged step."""
    meta = _read(run / "checkpoints" / "last" / "state.json") or {}
    f = run / "metrics.jsonl"
    events = [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []
    ends = [e for e in events if e.get("event") in ("stop", "terminated")]
    timed = [e for e in events if "elapsed_s" in e]
    return {"run": run.name, "checkpoint_step": meta.get("state", {}).get("step"),
            "stopped_at_step": ends[-1]["step"] if ends else None,
            "train_wall_seconds_at_last_log": timed[-1]["elapsed_s"] if timed else None,
            "last_logged_step": timed[-1].get("step") if timed else None}  # fmt: skip


def _limited_tables(out: Path) -> None:
    """vision_fmnist_limited.json: the data-limited regime (LIMITED): the AT selection on
    validation (seed 0) and the 3-seed rows of scratch, the chosen AT setting and KD + AT."""
    rows = {label: _seed_rows(_limited_name(label, 0)[:-3], " ".join(_limited_args(label, 0)))
            for label in ("scratch", *LIMITED_GRID, "kd-at")}  # fmt: skip
    selection = {}
    for label in ("scratch", *LIMITED_GRID):
        r = _read(RUNS / _limited_name(label, 0) / "results.json")
        term, weight, at = LIMITED_GRID.get(label, ("", 0.0, ()))
        selection[label] = {
            "term": term or None, "beta": 2 * weight if term else None, "stages": list(at),
            "val_accuracy": r["student"].get("select_accuracy") if r else None,
        }  # fmt: skip
    _write(out / "vision_fmnist_limited.json", {
        "what": f"Fashion-MNIST test accuracy (10k) of cnn:small students trained on "
                f"{LIMITED['images']} training images (data.max_images: class-balanced, seeded "
                f"by train.seed), {LIMITED['steps']} steps of 128, best of the evaluations every "
                f"{LIMITED['eval_every']} steps on the validation split; teacher cnn:large "
                "(runs/fmnist-teacher, trained on all 57k). at_selection: seed 0, validation "
                "accuracy only; the chosen setting (at_chosen) and its scratch twin have 3 seeds "
                "at the same budget; rows hold each run's test figure; the full argument list of "
                "seed 0 is each row's 'recipe'",
        "command": "python scripts/vision_repro.py run --parts limited-select --parallel 1 && "
                   "python scripts/vision_repro.py run --parts limited --parallel 1 && "
                   "python scripts/vision_repro.py tables",
        "under_load": "one run at a time, one thread, nice 10, while a teacher run of ours "
                      "(nice 15) and other agents' jobs shared the 2 cores",
        "rows": rows, "at_chosen": _limited_chosen(), "at_selection": selection,
    })  # fmt: skip


def _seed_rows(prefix: str, recipe: str) -> dict:
    """One row from the finished runs <prefix>-s<seed> (not fmnist-vit-deit-soft-s0 for
    fmnist-vit-deit): test accuracies, their mean/std, validation accuracies, wall times."""
    pattern = re.compile(rf"{re.escape(prefix)}-s(\d+)")
    matches = ((pattern.fullmatch(p.name), p) for p in RUNS.glob(f"{prefix}-s*"))
    folders = sorted((int(m.group(1)), p) for m, p in matches if m)
    found = [(seed, p, _read(p / "results.json")) for seed, p in folders]
    found = [(seed, p, r) for seed, p, r in found if r]
    acc = [r["student"]["accuracy"] for _, _, r in found]
    secs = [r["train"]["seconds_this_session"] for _, _, r in found]
    return {
        "recipe": recipe, "runs": [p.name for _, p, _ in found],
        "seeds": [seed for seed, _, _ in found], "accuracy": acc, **_stats(acc),
        "val_accuracy": [r["student"].get("select_accuracy") for _, _, r in found],
        "steps": [r["train"]["steps"] for _, _, r in found],
        "params": found[0][2]["student"]["params"] if found else None,
        "train_seconds": secs,
        "train_seconds_mean": statistics.fmean(secs) if secs else None,
        "train_wall_seconds_all_sessions": [_wall(p) for _, p, _ in found],
    }  # fmt: skip


def _long_tables(out: Path) -> None:
    """vision_fmnist_3000.json: the 3000-step students (3 seeds) and the AT selection (seed 0,
    validation accuracy only; the test figures of the candidates are not used)."""
    n, chosen = LONG_STEPS, _at_chosen()
    rows = {
        "scratch": _seed_rows(f"fmnist-scratch-{n}", "recipes/fmnist-scratch.yaml"),
        "kd-at": _seed_rows(f"fmnist-kd-at-{n}", "recipes/fmnist-kd-at.yaml"),
    }
    for label in AT_GRID:  # every AT setting: seed 0 (the selection), seeds 1-2 when chosen
        rows[f"at-{label}"] = _seed_rows(f"fmnist-at-{label}-{n}",
                                         f"recipes/fmnist-at.yaml + {_at_losses(label)}")
    selection = {}
    for label, (term, weight, at) in AT_GRID.items():
        r = _read(RUNS / f"fmnist-at-{label}-{n}-s0" / "results.json")
        selection[label] = {
            "term": term, "beta": 2 * weight, "weight_per_stage": weight, "stages": list(at),
            "val_accuracy": r["student"].get("select_accuracy") if r else None,
            "override": _at_losses(label),
        }  # fmt: skip
    loop = " ".join(f"train.{k}={n}" for k in ("max_steps", "eval_every", "save_every"))
    _write(out / "vision_fmnist_3000.json", {
        "what": f"Fashion-MNIST test accuracy (10k) of cnn:small students at {n} steps (twice the "
                "recipes' 1500), teacher cnn:large (runs/fmnist-teacher); mean/sample std over "
                "seeds; rows at-<label> are the AT settings of at_selection (seed 0 chose on "
                "validation; the chosen one, at_chosen, has 3 seeds; at-p300 is the previous "
                "recipe)",
        "command": f"python scripts/vision_repro.py run --parts at-select students-3000 "
                   f"--parallel 1 && python scripts/vision_repro.py tables (each run: attnkd "
                   f"distill recipes/fmnist-<r>.yaml name=fmnist-<r>-{n}-s<seed> "
                   f"train.seed=<seed> {loop} [losses=<override>] --no-progress --overwrite)",
        "under_load": "one thread per run; scratch/kd-at/at-p300 two side by side on a nearly "
                      "quiet machine (earlier session); the at_group runs one at a time while "
                      "other agents' jobs shared the 2 cores",
        "rows": rows, "at_chosen": chosen,
        "at_selection": selection,
    })  # fmt: skip


def _at_selection() -> dict:
    """The AT weight chosen on the validation split (seed 0): runs tune-at-w<W>-s0 plus
    fmnist-at-s0 (the recipe's weight); test accuracy is not used for the choice."""
    found = {}
    for p in sorted([*RUNS.glob("tune-at-w*-s0"), RUNS / "fmnist-at-s0"]):
        r = _read(p / "results.json")
        if r:
            cfg = yaml.safe_load((p / "config.yaml").read_text())
            weights = [t.get("weight") for t in cfg["losses"] if t["name"] == "at"]
            found[p.name] = {"at_weights": weights,
                             "val_accuracy": r["student"].get("select_accuracy")}  # fmt: skip
    return found


def _condense_table(out: Path) -> None:
    """results/vision_condense.json (and the grids) from the condensation runs found."""
    earlier = _condense_cells(RUNS / "condense", CONDENSE["methods"], CONDENSE["ipc"], out, None)
    long_dir = RUNS / f"condense-{CONDENSE_LONG['iterations']}"
    cells_long = _condense_cells(long_dir, CONDENSE_LONG["methods"], CONDENSE_LONG["ipc"], out,
                                 f"-{CONDENSE_LONG['iterations']}it")  # fmt: skip
    path = out / "vision_condense.json"
    old = _read(path) or {}
    if old.get("cells") and "selection" not in old:  # the one-set table of earlier sessions
        old["cells_one_set_full_train"] = old.pop("cells")
    choice = choose(_read, extra=improve_candidates(_read))  # first: checks DataDAM's cells
    cells = _carry_from(old, "cells", final_cells(_read, _copy_png, out, more=True))
    w100 = final_cells(_read, lambda a, b: _copy_png(a, b.with_name(f"w100-{b.name}")), out,
                       SENSITIVITY["out"], ["datadam"], SENSITIVITY["sizes"])  # fmt: skip
    _write(path, {
        "what": "Fashion-MNIST test accuracy (10k) of fresh ConvNet-3 judges (cnn:condense) "
                "trained only on N synthetic images/class; mean/std over condensation seeds "
                "(one judge each, judge seed = condensation seed); condensed from the first "
                "55000 training images, settings chosen on the last 5000 ('selection'); "
                "'table': random subset, DM and DataDAM at the setting chosen per size on "
                "validation ('datadam_per_size', rule 'datadam_rule')",
        "command": "python scripts/vision_repro.py run --parts condense-final condense-w100 "
                   "--parallel 1 && python scripts/vision_repro.py run --parts condense-improve "
                   "--parallel 1 (twice: the screen, then the adopted variant's seeds) && "
                   "python scripts/vision_repro.py run --parts condense-more --parallel 2 && "
                   "python scripts/vision_repro.py tables --condense-only",
        "under_load": "seeds 0-2: one condensation run at a time, one thread, nice 10, while "
                      "the coordinator's training runs and other jobs shared the 2 cores; "
                      "seeds 3-6 (condense-more): two runs at a time, one thread each, "
                      "nothing else heavy running",
        "table": headline(cells, choice, chosen_cells(_read, choice)),
        "datadam_rule": RULE,
        "more_seeds": {**MORE, "test": "DataDAM beats DM at a size when the one-sided paired "
                       "t-test over every seed of the size (same-seed differences of test "
                       "accuracy) gives p < alpha; seeds and test fixed before their cells ran; "
                       "table.ipcN.datadam_minus_dm: p_one_sided, beats"},
        "datadam_per_size": choice,
        "datadam_improve": improve_table(_read, _copy_png, out),
        "budget": {**budget_table(_read), "command": "python scripts/vision_repro.py run "
                   "--parts condense-budget --parallel 2 && python scripts/vision_repro.py "
                   "tables --condense-only", "what": "validation accuracy (held-out training "
                   "images 55,001-60,000; the test set never read) of one judge per set"},
        "cells": cells,
        "selection": _carry_from(old, "selection", selection_table(_read)),
        "cells_datadam_weight100": _carry_from(old, "cells_datadam_weight100", w100),
        "command_datadam_weight100":
            "python scripts/vision_repro.py run --parts condense-w100 --parallel 1 && "
            "python scripts/vision_repro.py tables --condense-only",
        "selection_command": "python scripts/vision_repro.py run --parts condense-select "
                             "--parallel 1 && "
                             "python scripts/vision_repro.py tables --condense-only",
        "cells_one_set_full_train": _carry_from(old, "cells_one_set_full_train", earlier),
        "command_one_set_full_train": "python scripts/vision_repro.py run --parts condense && "
                                      "python scripts/vision_repro.py tables",
        f"cells_{CONDENSE_LONG['iterations']}_iterations": _carry_from(
            old, f"cells_{CONDENSE_LONG['iterations']}_iterations", cells_long),
        # the first DataDAM (attention ~1% of the gradient), as kept
        "cells_datadam_v1": old.get("cells_datadam_v1", {}),
        f"command_{CONDENSE_LONG['iterations']}_iterations":
            "python scripts/vision_repro.py run --parts condense-long --parallel 1 && "
            "python scripts/vision_repro.py tables",
    })  # fmt: skip


def _condense_cells(base: Path, methods: list[str], sizes: list[int], out: Path,
                    png_suffix: str | None) -> dict:  # fmt: skip
    """One cell per method and size from base/condense-<m>-ipc<n>-s0/results.json (n = 0 where
    missing); each set's image grid is copied to results/vision_condense_png/ unless
    ``png_suffix`` is None."""
    cells = {}
    for m in methods:
        for ipc in sizes:
            folder = base / f"condense-{m}-ipc{ipc}-s0"
            r = _read(folder / "results.json")
            if not r or "test_accuracies" not in r:
                cells[f"{m}/ipc{ipc}"] = {"n": 0, "mean": None, "std": None}  # missing
                continue
            acc = r["test_accuracies"]
            if png_suffix is not None:
                _copy_png(folder / "images.png",
                          out / "vision_condense_png" / f"{m}-ipc{ipc}-s0{png_suffix}.png")
            moved = _moved(m, ipc, 0) if base == RUNS / "condense" else None
            cells[f"{m}/ipc{ipc}"] = {
                "accuracy": acc, **_stats(acc), "judge_seeds": r["judge_seeds"],
                "judge_net": r["judge_net"], "judge_steps": r["eval_steps"],
                "condense_seed": r["config"]["seed"], "iterations": r["config"]["iterations"],
                "real_batch": r["config"]["real_batch"], "augment": r["config"]["augment"],
                "attention_weight": r["config"].get("attention_weight"),
                "power": r["config"].get("power"),
                "condense_seconds": r["condense_seconds"], "judge_seconds": r["judge_seconds"],
                "loss_first": r["loss_first"], "loss_last": r["loss_last"],
                "pixel_range": r["pixel_range"],
                "mean_abs_pixel_change_from_start": moved if moved is not None
                else r.get("mean_abs_change_from_start"),
            }  # fmt: skip
    return cells


def _moved(method: str, ipc: int, seed: int) -> float | None:
    """Mean |synthetic − starting real image|: every method starts from the images the 'random'
    run of the same size and seed returns, so the two saved sets are compared."""
    from safetensors.torch import load_file

    base = RUNS / "condense"
    a = base / f"condense-{method}-ipc{ipc}-s{seed}" / "synthetic.safetensors"
    b = base / f"condense-random-ipc{ipc}-s{seed}" / "synthetic.safetensors"
    if not (a.is_file() and b.is_file()):
        return None
    return float((load_file(str(a))["images"] - load_file(str(b))["images"]).abs().mean())


def _copy_png(src: Path, dst: Path) -> None:
    """The run's image grid next to the tables (written whole: a temporary file, then a rename)."""
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp")
        tmp.write_bytes(src.read_bytes())
        tmp.replace(dst)


def _carry(path: Path, section: str, new: dict) -> dict:
    """``new`` with every entry this checkout has no finished run for (missing, or n = 0) taken
    from the committed ``path`` instead, marked ``carried_from_earlier_session`` (the runs of an
    earlier session are not always copied along; their figures stay as they were measured)."""
    return _carry_from(_read(path) or {}, section, new)


def _carry_from(committed: dict, section: str, new: dict) -> dict:
    """:func:`_carry` from an already-read ``committed`` table."""
    old = committed.get(section, {})
    merged = dict(new)
    for key, entry in old.items():
        if (key not in new or not new[key].get("n", 1)) and entry.get("n", 1):
            merged[key] = {**entry, "carried_from_earlier_session": True}
    return merged


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--parallel", type=int, default=2)
    r.add_argument("--condense-iterations", type=int, nargs=3, default=[300, 300, 80],
                   metavar=("IPC1", "IPC10", "IPC50"), help="matching iterations per size")
    r.add_argument("--judge-steps", type=int, nargs=3, default=[300, 300, 100],
                   metavar=("IPC1", "IPC10", "IPC50"), help="judge training steps per size")
    r.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    r.add_argument("--methods", nargs="+", default=None, choices=CONDENSE["methods"],
                   help="condense: only these methods")
    r.add_argument("--ipc", type=int, nargs="+", default=None, choices=CONDENSE["ipc"],
                   help="condense: only these sizes")
    t = sub.add_parser("tables")
    t.add_argument("--out", default="results")
    t.add_argument("--condense-only", action="store_true",
                   help="write only vision_condense.json (and its image grids)")
    a = p.parse_args()
    if a.cmd == "run":
        sizes = CONDENSE["ipc"]
        run(a.seeds, a.parallel, dict(zip(sizes, a.condense_iterations)),
            dict(zip(sizes, a.judge_steps)), a.parts, a.methods, a.ipc)  # fmt: skip
    else:
        try:
            tables(Path(a.out), a.condense_only)
        except AttnkdError as err:  # a malformed run folder: say which, no traceback
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
