"""Run the teacher-strategy recipes on Fashion-MNIST and collect results/teachers_fmnist.json.

    nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/teachers_fmnist.py \
        [--only ensemble,selfdistill,mutual,multiexit] [--collect] [--json PATH]

Each recipe is an ordinary run; a finished run is reused, not retrained (``--collect`` only reads
finished runs and trains nothing). The JSON holds each run's test accuracy (10k), the teachers'
and the peer's, the selection (validation) accuracy, steps and training seconds. Extra rows: the
two labels-only cnn:small runs that teach the ensemble, and the multi-exit variant with exit
weight 1.0 that the validation split rejected (``--multiexit-w1``: train it too).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from attnkd.atomic import write_json
from attnkd.config.io import apply_overrides, load_config
from attnkd.distill import run_distill

RECIPES = {
    "ensemble": "recipes/fmnist-ensemble.yaml",
    "selfdistill": "recipes/fmnist-selfdistill.yaml",
    "mutual": "recipes/fmnist-mutual.yaml",
    "multiexit": "recipes/fmnist-multiexit.yaml",
}
EXTRA = {  # row: (recipe, overrides)
    "scratch": ("recipes/fmnist-scratch.yaml", []),
    "ensemble_member": ("recipes/fmnist-ensemble-member.yaml", []),
    "multiexit_w1": ("recipes/fmnist-multiexit.yaml",
                     ["name=fmnist-multiexit", "losses.1.weight=1.0", "losses.2.weight=1.0"]),
}  # fmt: skip
OVERRIDES = {"multiexit": ["name=fmnist-multiexit-w02"]}  # the run folder it was measured in


def _row(res: dict) -> dict:
    out = {
        "run": res["name"],
        "student_accuracy": res["student"]["accuracy"],
        "student_val_accuracy": res["student"].get("select_accuracy"),
        "student_params": res["student"]["params"],
        "teacher": res["teacher"],
        "steps": res["train"]["steps"],
        "train_seconds": res["train"]["seconds_this_session"],
    }
    for key in ("teachers", "peer"):
        if key in res:
            out[key] = res[key]
    return out


def _results(cfg, collect: bool) -> dict | None:
    """A finished run's results; otherwise train it (None with ``collect``)."""
    gens = cfg.strategy.generations
    if gens > 1:
        done = [Path(cfg.output_dir) / f"{cfg.name}-gen{g}" / "results.json" for g in range(gens)]
        if collect:
            found = [json.loads(p.read_text()) for p in done if p.is_file()]
            return {"generations": [{"results": r} for r in found]} if found else None
        return run_distill(cfg, progress=False)  # finished generations are skipped
    done = Path(cfg.output_dir) / cfg.name / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    return None if collect else run_distill(cfg, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(RECIPES))
    ap.add_argument("--collect", action="store_true", help="read finished runs, train nothing")
    ap.add_argument("--multiexit-w1", action="store_true")
    ap.add_argument("--json", default="results/teachers_fmnist.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    rows: dict = {}
    todo = {k: (RECIPES[k], OVERRIDES.get(k, [])) for k in args.only.split(",")}
    extra = EXTRA if args.multiexit_w1 else {k: v for k, v in EXTRA.items() if k != "multiexit_w1"}
    for key, (recipe, overrides) in {**todo, **extra}.items():
        cfg = apply_overrides(load_config(recipe), overrides)
        res = _results(cfg, args.collect or key in ("scratch", "ensemble_member"))
        if res is None:
            rows[key] = {"recipe": recipe, "overrides": overrides, "not_finished": True}
        elif "generations" in res:
            gens = [_row(g["results"]) for g in res["generations"]]
            rows[key] = {"recipe": recipe, "overrides": overrides, "generations": gens}
        else:
            rows[key] = {"recipe": recipe, "overrides": overrides, **_row(res)}
    doc = {
        "what": "Fashion-MNIST test accuracy (10k) of the teacher-strategy recipes, one seed each "
                "(the seed in each recipe); cnn:small students (55k parameters), 1500 steps",
        "command": "nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python "
                   "scripts/teachers_fmnist.py --multiexit-w1",
        "under_load": True,
        "reference": "results/vision_fmnist.json rows.scratch: cnn:small from labels, 3 seeds, "
                     "quiet machine: 0.8930 +- 0.0020",
        "rows": rows,
    }  # fmt: skip
    write_json(Path(args.json), doc)
    print(json.dumps(rows, indent=1)[:4000])


if __name__ == "__main__":
    main()
