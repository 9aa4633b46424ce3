"""Reproduce the text-classification tables (SST-2, MRPC, RTE): run recipes over seeds, tabulate.

    python scripts/cls_repro.py run sst2-teacher:0 sst2-l3:0,1,2 sst2-l3-scratch:0,1,2
    python scripts/cls_repro.py tables sst2 --json results/cls_sst2.json
    python scripts/cls_repro.py curves screen-a screen-b --json results/screen.json

``run`` trains each ``RECIPE:SEEDS`` item one after another (``attnkd distill
recipes/RECIPE.yaml name=RECIPE-sSEED train.seed=SEED``; a teacher recipe keeps its own name, as
its students read ``runs/<dataset>-teacher/student``) and records each command's wall time in
``runs/<name>/wall.json``; a run that already has results.json is skipped. ``tables`` reads the
runs of one data set and writes one row per recipe: metric mean ± std over seeds, retention
against the teacher run (same evaluation split), wall time. ``curves`` records screening runs:
each run's selection-split score at every evaluation (what a setting is chosen on), its best
step and, for reference only, its evaluation-split score.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"


def run_name(recipe: str, seed: int) -> str:
    """``RECIPE-sSEED``; a teacher's seed 0 keeps the recipe's name (its students read
    ``runs/<dataset>-teacher/student``), its other seeds are ``RECIPE-sSEED`` (table rows only)."""
    return recipe if recipe.endswith("-teacher") and seed == 0 else f"{recipe}-s{seed}"


def cmd_run(items: list[str]) -> int:
    for item in items:
        recipe, _, seeds = item.partition(":")
        for seed in [int(s) for s in (seeds or "0").split(",")]:
            name = run_name(recipe, seed)
            if (RUNS / name / "results.json").is_file():
                print(f"skip {name}: done", flush=True)
                continue
            argv = [
                sys.executable,
                "-m",
                "attnkd",
                "distill",
                f"recipes/{recipe}.yaml",
                f"name={name}",
                f"train.seed={seed}",
                "--no-progress",
                "--overwrite",
            ]
            print(" ".join(argv[1:]), flush=True)
            t0 = time.time()
            rc = subprocess.call(argv, cwd=ROOT, env=os.environ.copy())
            wall = time.time() - t0
            if rc == 0:
                (RUNS / name / "wall.json").write_text(
                    json.dumps({"wall_s": wall, "command": " ".join(["attnkd", *argv[3:]])})
                )
            print(f"{name}: exit {rc}, {wall:.0f} s", flush=True)
    return 0


def _mean_std(xs: list[float]) -> dict:
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "n": len(xs),
        "values": xs,
    }


def cmd_tables(dataset: str, out: Path | None, runs_dir: Path = RUNS, note: str = "") -> int:
    teacher_dir = runs_dir / f"{dataset}-teacher"
    teacher = json.loads((teacher_dir / "results.json").read_text())
    t_acc, t_f1 = teacher["student"]["accuracy"], teacher["student"]["f1"]
    # the teacher row: the seed-0 run (the one that teaches) and any other teacher seeds
    t_dirs = [teacher_dir] + sorted(
        p for p in runs_dir.glob(f"{dataset}-teacher-s*") if (p / "results.json").is_file()
    )
    t_res = [json.loads((p / "results.json").read_text()) for p in t_dirs]
    rows = [
        {
            "recipe": f"{dataset}-teacher",
            "layers": teacher["student"]["layers"],
            "params": teacher["student"]["params"],
            "seeds": [r.get("seed", 0) for r in t_res],
            "accuracy": _mean_std([r["student"]["accuracy"] for r in t_res]),
            "f1": _mean_std([r["student"]["f1"] for r in t_res]),
            "retention": _mean_std([r["student"]["accuracy"] / t_acc for r in t_res]),
            "teaches": f"{teacher['name']} (seed {teacher.get('seed', 0)}): every student's "
            "retention is against this run",
            "steps": teacher["train"]["steps"],
            "wall_s": _mean_std([_wall(p) for p in t_dirs]),
            "commands": [_command(p) for p in t_dirs],
        }
    ]
    recipes = sorted(
        {
            p.name.rsplit("-s", 1)[0]
            for p in runs_dir.glob(f"{dataset}-l*-s*")
            if (p / "results.json").is_file()
        }
    )
    for recipe in recipes:
        runs = sorted(
            p
            for p in runs_dir.glob(f"{recipe}-s*")
            if (p / "results.json").is_file() and p.name.rsplit("-s", 1)[0] == recipe
        )
        res = [json.loads((p / "results.json").read_text()) for p in runs]
        acc = [r["student"]["accuracy"] for r in res]
        f1 = [r["student"]["f1"] for r in res]
        rows.append(
            {
                "recipe": recipe,
                "layers": res[0]["student"]["layers"],
                "params": res[0]["student"]["params"],
                "seeds": [int(p.name.rsplit("-s", 1)[1]) for p in runs],
                "accuracy": _mean_std(acc),
                "f1": _mean_std(f1),
                "retention": _mean_std([a / t_acc for a in acc]),
                "retention_f1": _mean_std([f / t_f1 for f in f1]),
                "teacher_used": res[0]["train"]["teacher_used"],
                "steps": res[0]["train"]["steps"],
                "wall_s": _mean_std([_wall(p) for p in runs]),
                "commands": [_command(p) for p in runs],
            }
        )
    table = {
        "dataset": dataset,
        "eval_split": teacher["eval_split"],
        "select_split": teacher["select_split"],
        "teacher_run": teacher["name"],
        "train_rows": teacher["train"]["train_examples"],
        "held_out_removed": teacher["train"]["held_out_removed"],
        "note": "wall_s: the whole attnkd distill command (load, train, evaluate, export), "
        "one thread per run, 2 shared CPU cores under load from other jobs"
        + (f"; {note}" if note else ""),
        "rows": rows,
    }
    for r in rows:
        a, f, ret = r["accuracy"], r["f1"], r["retention"]
        print(
            f"{r['recipe']:18s} L{r['layers']} acc {100 * a['mean']:.2f} ± {100 * a['std']:.2f}"
            f"  F1 {100 * f['mean']:.2f} ± {100 * f['std']:.2f}  retention "
            f"{100 * ret['mean']:.1f}%  n={a['n']}  wall {r['wall_s']['mean']:.0f} s"
        )
    if out is not None:
        _write(out, table)
    return 0


def cmd_curves(
    names: list[str],
    out: Path | None,
    runs_dir: Path = RUNS,
    note: str = "",
    eval_seen: bool = False,
) -> int:
    runs = {}
    for name in names:
        d = runs_dir / name
        if not (d / "results.json").is_file():
            print(f"error: {d / 'results.json'}: no finished run called '{name}'", file=sys.stderr)
            return 2
        res = json.loads((d / "results.json").read_text())
        # classification runs report accuracy (a fraction), sentence runs Spearman (x100)
        metric = "accuracy" if "accuracy" in res["student"] else "spearman"
        scale = 100.0 if metric == "accuracy" else 1.0
        curve = {}
        for line in (d / "metrics.jsonl").read_text().splitlines():
            ev = json.loads(line)
            if ev.get("event") == "eval":
                curve[str(ev["step"])] = ev["metrics"][metric]
        runs[name] = {
            "select_split": res["select_split"],
            f"select_{metric}_by_step": curve,
            "best_step": res["student"]["best_step"],
            f"select_{metric}": res["student"][f"select_{metric}"],
            "eval_split": res["eval_split"],
            f"eval_{metric}_{'seen_before_choosing' if eval_seen else 'not_used_to_choose'}": res[
                "student"
            ][metric],
            "command": _command(d) or f"attnkd distill <recipe> name={name}",
        }
        steps = ", ".join(f"{k}: {scale * v:.2f}" for k, v in curve.items())
        r = runs[name]
        best = f"best {scale * r[f'select_{metric}']:.2f} at step {r['best_step']}"
        print(f"{name:24s} {best}  ({steps})")
    if out is not None:
        what = "screening runs: selection-split score per evaluation"
        _write(out, {"what": what, "note": note, "runs": runs})
    return 0


def _write(out: Path, table: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    tmp.replace(out)


def _command(run_dir: Path) -> str | None:
    path = run_dir / "wall.json"
    return json.loads(path.read_text()).get("command") if path.is_file() else None


def _wall(run_dir: Path) -> float:
    path = run_dir / "wall.json"
    return json.loads(path.read_text())["wall_s"] if path.is_file() else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("items", nargs="+", help="RECIPE:SEED[,SEED...]")
    t = sub.add_parser("tables")
    t.add_argument("dataset", choices=["sst2", "mrpc", "rte"])
    t.add_argument("--json", type=Path, default=None)
    t.add_argument("--note", default="", help="appended to the table's note (run conditions)")
    c = sub.add_parser("curves")
    c.add_argument("runs", nargs="+", help="run names under runs/")
    c.add_argument("--json", type=Path, default=None)
    c.add_argument("--note", default="", help="what the screen compares and its conditions")
    c.add_argument("--eval-seen", action="store_true",
                   help="the evaluation-split scores were looked at before the choice was made "
                   "(recorded as such instead of 'not used to choose')")  # fmt: skip
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args.items)
    if args.cmd == "curves":
        return cmd_curves(args.runs, args.json, note=args.note, eval_seen=args.eval_seen)
    return cmd_tables(args.dataset, args.json, note=args.note)


if __name__ == "__main__":
    sys.exit(main())
