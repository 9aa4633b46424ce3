"""The teachers' own Spearman on each seed's selection split (stsb:val), next to the starting
student's and the distilled students' best: how much room the selection split leaves.

    python scripts/mpnet_val_headroom.py --seeds 0,1,2 \\
        --run student-mpnet=runs/mpnet-sentence --run student-ensemble=runs/mpnet-minilm-ensemble \\
        --json results/mpnet_val_headroom.json

Teachers: those of recipes/mpnet-minilm-ensemble.yaml, scored from their embedding caches (the
few selection sentences not cached yet are encoded and cached). A ``--run NAME=PREFIX`` reads
``PREFIX-seed<S>/metrics.jsonl``: the step-0 score (the starting student as published) and the
best selection score of the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from attnkd.atomic import write_json


def _curve(folder: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["metrics"]["spearman"] for r in rows if r.get("event") == "eval"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="recipes/mpnet-minilm-ensemble.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--run", action="append", default=[], help="NAME=RUN_PREFIX (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from attnkd.config.io import load_config
    from attnkd.eval.sts import sts_from_embeddings
    from attnkd.tasks.sentence import eval_pairs
    from attnkd.tasks.sentence_teachers import teacher_targets

    cfg = load_config(args.recipe)
    runs = dict(r.split("=", 1) for r in args.run)
    out: dict = {"recipe": args.recipe, "split": cfg.data.select_task, "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        c = replace(cfg, train=replace(cfg.train, seed=seed))
        val = eval_pairs(c, c.data.select_task)
        uniq = sorted(val.sentences())
        row: dict = {"pairs": len(val.scores), "teachers": {}}
        for t in cfg.teachers:
            emb = teacher_targets(t.name, uniq, cfg.data.max_length).embeddings
            r = sts_from_embeddings(dict(zip(uniq, emb)), val.sentences1, val.sentences2,
                                    val.scores)  # fmt: skip
            row["teachers"][t.label or t.name] = r.spearman
        for name, prefix in runs.items():
            curve = _curve(Path(f"{prefix}-seed{seed}"))
            best = max(curve, key=curve.get)
            row[name] = {"step0": curve[0], "best": curve[best], "best_step": best}
        out["seeds"][seed] = row
        print(seed, json.dumps(row), flush=True)
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
