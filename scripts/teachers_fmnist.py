"""Run the teacher-strategy recipes on Fashion-MNIST and collect results/teachers_fmnist.json.

    nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/teachers_fmnist.py \
        [--only ensemble,selfdistill,mutual] [--json results/teachers_fmnist.json]

Each recipe is an ordinary run (finished runs are reused, not retrained); the JSON holds every
run's test accuracy (10k), the teachers' and the peer's, steps and training seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from attnkd.atomic import write_json
from attnkd.config.io import load_config
from attnkd.distill import run_distill

RECIPES = {
    "ensemble": "recipes/fmnist-ensemble.yaml",
    "selfdistill": "recipes/fmnist-selfdistill.yaml",
    "mutual": "recipes/fmnist-mutual.yaml",
    "multiexit": "recipes/fmnist-multiexit.yaml",
}


def _row(res: dict) -> dict:
    out = {
        "run": res["name"],
        "student_accuracy": res["student"]["accuracy"],
        "student_params": res["student"]["params"],
        "teacher": res["teacher"],
        "steps": res["train"]["steps"],
        "train_seconds": res["train"]["seconds_this_session"],
    }
    for key in ("teachers", "peer"):
        if key in res:
            out[key] = res[key]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(RECIPES))
    ap.add_argument("--json", default="results/teachers_fmnist.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    path = Path(args.json)
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc.update({
        "what": "Fashion-MNIST test accuracy (10k) of the teacher-strategy recipes, seed as in "
                "each recipe, one seed each",
        "command": "nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python "
                   "scripts/teachers_fmnist.py",
        "under_load": True,
    })  # fmt: skip
    rows = doc.setdefault("rows", {})
    for key in args.only.split(","):
        t0 = time.time()
        cfg = load_config(RECIPES[key])
        done = Path(cfg.output_dir) / cfg.name / "results.json"  # a finished single run
        # (generations skip their finished runs themselves)
        res = json.loads(done.read_text()) if done.is_file() else run_distill(cfg, progress=False)
        if "generations" in res:
            gens = [_row(g["results"]) for g in res["generations"]]
            rows[key] = {"recipe": RECIPES[key], "generations": gens}
        else:
            rows[key] = {"recipe": RECIPES[key], **_row(res)}
        rows[key]["wall_seconds"] = time.time() - t0
        write_json(path, doc)  # after every recipe: a partial table survives a stop
        print(json.dumps(rows[key], indent=1)[:2000], flush=True)
    scratch = Path("runs/fmnist-scratch/results.json")
    if scratch.is_file():
        r = json.loads(scratch.read_text())
        rows["scratch"] = {"recipe": "recipes/fmnist-scratch.yaml", **_row(r)}
    member = Path("runs/fmnist-ensemble-member/results.json")
    if member.is_file():
        r = json.loads(member.read_text())
        rows["ensemble_member"] = {"recipe": "recipes/fmnist-ensemble-member.yaml", **_row(r)}
    write_json(path, doc)


if __name__ == "__main__":
    main()
