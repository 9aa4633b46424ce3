"""Encode throughput of a teacher and students, measured side by side in one run.

    python bench/encode_speed.py --student runs/minilm-sentence/student --json out.json

Models alternate every round on the same pre-tokenised STS-B dev sentences (batch 64, max
length 128, mean pooling excluded), so background load affects all alike; prints sentences/s
per model (median of rounds) and each student's speed-up over the teacher.
"""

from __future__ import annotations

import argparse
import sys

import torch

from attnkd.atomic import write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--teacher", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument(
        "--student",
        action="append",
        default=[],
        help="student folder or name (repeatable); default: the {0,2,5} cut",
    )
    p.add_argument("--sentences", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from attnkd.data.benchmarks import read_stsb
    from attnkd.eval.speed import measure_throughput
    from attnkd.models.load import count_parameters, freeze, load_encoder
    from attnkd.students.build import build_student

    pairs = read_stsb("dev")
    sents = [s for p_ in pairs for s in (p_.sentence1, p_.sentence2)][: args.sentences]
    t = load_encoder(args.teacher)
    models = {"teacher": freeze(t.model)}
    for s in args.student:
        parts = [x for x in s.rstrip("/").split("/") if x]
        name = "/".join(parts[-2:]) if parts and parts[-1] == "student" else (parts or [s])[-1]
        models[name] = freeze(load_encoder(s, tokenizer=False).model)
    if not args.student:
        models["cut-0-2-5"] = freeze(build_student(t.model, [0, 2, 5])[0])
    res = measure_throughput(models, t.tokenizer, sents, args.batch_size, rounds=args.rounds)
    base = res["teacher"].sentences_per_s
    print(f"{'model':24s} {'params':>10s} {'sent/s':>9s} {'speed-up':>9s}")
    out = {"threads": torch.get_num_threads(), "sentences": len(sents), "models": {}}
    for name, r in res.items():
        n = count_parameters(models[name])
        print(
            f"{name:24s} {n / 1e6:9.1f}M {r.sentences_per_s:9.1f} {r.sentences_per_s / base:8.2f}x"
        )
        out["models"][name] = {
            "params": n,
            "sentences_per_s": r.sentences_per_s,
            "rounds": r.rounds,
            "speedup": r.sentences_per_s / base,
        }
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
