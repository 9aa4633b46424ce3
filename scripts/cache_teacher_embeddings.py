"""Fill the embedding caches of a recipe's ``teachers:`` for the corpora of several seeds (and
the evaluation split), so later runs only read them.

    python scripts/cache_teacher_embeddings.py recipes/mpnet-minilm-ensemble.yaml --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=["corpus", "eval"], default=None)
    p.add_argument("--teacher", default=None, help="only this teacher (default: all)")
    p.add_argument("--reverse", action="store_true", help="last sentence first (a 2nd process)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from attnkd.config.io import load_config
    from attnkd.tasks.sentence import build_sentence_corpus, eval_splits
    from attnkd.tasks.sentence_teachers import teacher_targets

    cfg = load_config(args.recipe)
    for seed in [int(s) for s in args.seeds.split(",")]:
        c = replace(cfg, train=replace(cfg.train, seed=seed))
        splits = eval_splits(c)
        corpus = build_sentence_corpus(c, splits)
        # the training sentences of every teacher first, then the evaluation split
        jobs = [("corpus", t.name, corpus.sentences) for t in cfg.teachers]
        jobs += [("eval", t.name, sorted(splits.eval.sentences())) for t in cfg.teachers]
        for what, name, texts in jobs:
            if (args.only and what != args.only) or (args.teacher and name != args.teacher):
                continue
            r = teacher_targets(name, texts[::-1] if args.reverse else texts, cfg.data.max_length)
            print(
                f"seed {seed} {what} {name}: {len(texts)} sentences, {r.encoded} encoded "
                f"in {r.seconds:.0f} s -> {r.cache_file}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
