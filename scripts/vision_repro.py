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

STUDENTS = ["scratch", "kd", "at", "kd-at", "rkd", "vit-deit", "vit-deit-soft"]
CONDENSE = {"methods": ["datadam", "dm", "random"], "ipc": [1, 10, 50]}
JUDGE_SEEDS = ["0", "1", "2"]
"""Every condensed set (condensation seed 0) is judged by three fresh ConvNet-3s."""
RUNS = Path("runs")
PARTS = ["teacher", "students", "vit", "condense", "prune"]


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


def run(seeds: list[int], parallel: int, condense_iterations: dict[int, int],
        judge_steps: dict[int, int], parts: list[str]) -> None:  # fmt: skip
    """Teacher first, then ``parallel`` lanes take, in order: the students (seed by seed), the
    pruning chain, the condensation cells (size by size)."""
    logs = RUNS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if "teacher" in parts and not _done("fmnist-teacher"):
        _cli(["distill", "recipes/fmnist-teacher.yaml", "--no-progress"], logs / "teacher.log")
    jobs = []
    for seed in seeds:
        for s in STUDENTS:
            name = f"fmnist-{s}-s{seed}"
            if ("vit" if s.startswith("vit") else "students") in parts and not _done(name):
                args = ["distill", f"recipes/fmnist-{s}.yaml", f"name={name}",
                        f"train.seed={seed}", "--no-progress", "--overwrite"]  # fmt: skip
                jobs.append(lambda a=args, n=name: _cli(a, logs / f"{n}.log"))
    if "prune" in parts:
        jobs.append(lambda: _prune_chain(logs))
    for ipc in CONDENSE["ipc"]:
        for m in CONDENSE["methods"]:
            folder = RUNS / "condense" / f"condense-{m}-ipc{ipc}-s0"
            if "condense" in parts and not (folder / "results.json").is_file():
                args = ["condense", "--method", m, "--ipc", str(ipc), "--seeds", "0",
                        "--iterations", str(condense_iterations[ipc]), "--real-batch", "32",
                        "--eval-steps", str(judge_steps[ipc]), "--judge-seeds", *JUDGE_SEEDS,
                        "--out", str(RUNS / "condense")]  # fmt: skip
                log = logs / f"condense-{m}-{ipc}-0.log"
                jobs.append(lambda a=args, f=log: _cli(a, f))
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda job: job(), jobs))


def _wall(run: Path) -> float | None:
    """Training wall time over all sessions of a run: the last 'stop' event's elapsed_s."""
    f = run / "metrics.jsonl"
    if not f.is_file():
        return None
    stops = [json.loads(x) for x in f.read_text().splitlines() if '"event": "stop"' in x]
    return stops[-1]["elapsed_s"] if stops else None


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "std": None}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"n": len(values), "mean": statistics.fmean(values), "std": std}


def tables(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    teacher = _read(RUNS / "fmnist-teacher" / "results.json")
    if teacher:
        rows["teacher"] = {
            "recipe": "recipes/fmnist-teacher.yaml", "seeds": [0],
            "accuracy": [teacher["student"]["accuracy"]],
            **_stats([teacher["student"]["accuracy"]]), "params": teacher["student"]["params"],
            "val_accuracy": [teacher["student"].get("select_accuracy")],
            "steps": [teacher["train"]["steps"]],
            "train_seconds": [teacher["train"]["seconds_this_session"]],
            "train_wall_seconds_all_sessions": [_wall(RUNS / "fmnist-teacher")],
        }  # fmt: skip
    for s in STUDENTS:
        pattern = re.compile(rf"fmnist-{re.escape(s)}-s(\d+)")  # not fmnist-vit-deit-soft-s0
        matches = ((pattern.fullmatch(p.name), p) for p in RUNS.glob(f"fmnist-{s}-s*"))
        folders = sorted((int(m.group(1)), p) for m, p in matches if m)
        found = [(seed, _read(p / "results.json")) for seed, p in folders]
        found = [(seed, r) for seed, r in found if r]
        acc = [r["student"]["accuracy"] for _, r in found]
        rows[s] = {
            "recipe": f"recipes/fmnist-{s}.yaml", "seeds": [seed for seed, _ in found],
            "accuracy": acc, **_stats(acc),
            "val_accuracy": [r["student"].get("select_accuracy") for _, r in found],
            "steps": [r["train"]["steps"] for _, r in found],
            "params": found[0][1]["student"]["params"] if found else None,
            "train_seconds": [r["train"]["seconds_this_session"] for _, r in found],
            "train_wall_seconds_all_sessions": [_wall(p) for _, p in folders if _read(
                p / "results.json")],
        }  # fmt: skip
    for row in rows.values():
        secs = [x for x in row["train_seconds"] if x is not None]
        row["train_seconds_mean"] = statistics.fmean(secs) if secs else None
    _write(out / "vision_fmnist.json", {
        "what": "Fashion-MNIST test accuracy (10k), mean/std over seeds; only runs that finished",
        "command": "python scripts/vision_repro.py run && python scripts/vision_repro.py tables",
        "wall_time": "train_seconds: each run's training wall time on the shared 2-core machine, "
                     "one thread per run, under load from other agents' jobs",
        "under_load": True, "rows": rows, "at_weight_selection": _at_selection(),
    })  # fmt: skip
    cells = {}
    for m in CONDENSE["methods"]:
        for ipc in CONDENSE["ipc"]:
            r = _read(RUNS / "condense" / f"condense-{m}-ipc{ipc}-s0" / "results.json")
            if not r or "test_accuracies" not in r:
                cells[f"{m}/ipc{ipc}"] = {"n": 0, "mean": None, "std": None}  # missing
                continue
            acc = r["test_accuracies"]
            _copy_png(RUNS / "condense" / f"condense-{m}-ipc{ipc}-s0" / "images.png",
                      out / "vision_condense_png" / f"{m}-ipc{ipc}-s0.png")  # fmt: skip
            cells[f"{m}/ipc{ipc}"] = {
                "accuracy": acc, **_stats(acc), "judge_seeds": r["judge_seeds"],
                "judge_net": r["judge_net"], "judge_steps": r["eval_steps"],
                "condense_seed": r["config"]["seed"], "iterations": r["config"]["iterations"],
                "real_batch": r["config"]["real_batch"], "augment": r["config"]["augment"],
                "condense_seconds": r["condense_seconds"], "judge_seconds": r["judge_seconds"],
                "loss_first": r["loss_first"], "loss_last": r["loss_last"],
                "pixel_range": r["pixel_range"],
                "mean_abs_pixel_change_from_start": _moved(m, ipc, 0),
            }  # fmt: skip
    _write(out / "vision_condense.json", {
        "what": "Fashion-MNIST test accuracy (10k) of fresh ConvNet-3 judges (cnn:condense) "
                "trained only on N images/class; mean/std over the judge seeds of one set",
        "command": "python scripts/vision_repro.py run --parts condense && "
                   "python scripts/vision_repro.py tables",
        "under_load": True, "cells": cells,
    })  # fmt: skip
    prune = {}
    for name in ("fmnist-teacher", "fmnist-prune-none", "fmnist-prune-ce", "fmnist-prune-at"):
        r = _read(RUNS / name / "results.json")
        if r:
            prune[name] = {"accuracy": r["student"]["accuracy"], "params": r["student"]["params"],
                           "train_seconds": r["train"]["seconds_this_session"]}  # fmt: skip
    _write(out / "vision_prune.json", {
        "what": "unpruned teacher vs 50% channel-pruned (BN scale): no recovery, CE, CE+AT",
        "command": "python scripts/vision_repro.py run && python scripts/vision_repro.py tables",
        "under_load": True, "rows": prune,
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
    t = sub.add_parser("tables")
    t.add_argument("--out", default="results")
    a = p.parse_args()
    if a.cmd == "run":
        sizes = CONDENSE["ipc"]
        run(a.seeds, a.parallel, dict(zip(sizes, a.condense_iterations)),
            dict(zip(sizes, a.judge_steps)), a.parts)  # fmt: skip
    else:
        tables(Path(a.out))


if __name__ == "__main__":
    main()
