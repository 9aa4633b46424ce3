"""Pick the 3-layer starting student on the selection split (stsb:val), never on dev.

    python scripts/mpnet_student_choice.py --json results/mpnet_student_choice.json

Candidates: the published paraphrase-MiniLM-L3-v2, and 3-layer cuts of all-MiniLM-L6-v2 (its
first layers, alternate layers, and the default recipe's {0, 2, 5}), scored as they are (no
training) on the selection split of recipes/mpnet-sentence.yaml.
"""

from __future__ import annotations

import argparse
import sys

import torch

from attnkd.atomic import write_json

L6 = "sentence-transformers/all-MiniLM-L6-v2"
L3 = "sentence-transformers/paraphrase-MiniLM-L3-v2"
CUTS = {"l6-first-0-1-2": [0, 1, 2], "l6-alternate-0-2-4": [0, 2, 4], "l6-cut-0-2-5": [0, 2, 5]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="recipes/mpnet-sentence.yaml")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from attnkd.config.io import load_config
    from attnkd.eval.sts import sts_eval
    from attnkd.models.load import load_encoder
    from attnkd.students.build import build_student
    from attnkd.tasks.sentence import eval_pairs

    cfg = load_config(args.recipe)
    val = eval_pairs(cfg, cfg.data.select_task)
    base = load_encoder(L6)
    models = {"paraphrase-l3": load_encoder(L3, tokenizer=False).model}
    models.update({k: build_student(base.model, v)[0] for k, v in CUTS.items()})
    out = {"select_split": val.name, "pairs": len(val.scores), "seed": cfg.train.seed, "val": {}}
    for name, m in models.items():
        r = sts_eval(m, base.tokenizer, val.sentences1, val.sentences2, val.scores,
                     max_length=cfg.data.max_length)  # fmt: skip
        out["val"][name] = r.spearman
        print(f"{name:22s} {val.name} Spearman {r.spearman:.2f}", flush=True)
    out["chosen"] = max(out["val"], key=out["val"].get)
    print("chosen:", out["chosen"])
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
