"""STS-B dev Spearman and encode throughput of sentence encoders, side by side in one run: the
MPNet teacher, all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2 and distilled students; plus the
seed-by-seed figures of the distillation runs (mean ± std).

    python bench/mpnet_sentence.py \\
        --model mpnet=sentence-transformers/all-mpnet-base-v2 \\
        --model minilm-l6=sentence-transformers/all-MiniLM-L6-v2 \\
        --model paraphrase-l3=sentence-transformers/paraphrase-MiniLM-L3-v2 \\
        --run student-mpnet=runs/mpnet-sentence-seed0,runs/mpnet-sentence-seed1 \\
        --cached mpnet --baseline minilm-l6 --json results/mpnet_sentence.json

(``attnkd repro RECIPE --seeds 3`` writes the runs ``runs/<name>-seed<S>``.)

Every model encodes with its own tokenizer (a student without one reads all-MiniLM-L6-v2's).
Spearman: cosine of mean-pooled embeddings, max length 128, the 1,500 dev pairs; a model named
in ``--cached`` has its dev embeddings read from (or written to) the teacher embedding cache,
which is keyed by the model's file fingerprint; a ``--run`` student's Spearman is the one its
run computed (results.json, same protocol). Throughput: the first ``--sentences`` dev
sentences, batch 64, tokenised outside the timing, models alternating every round (median of
rounds); speed-ups are against ``--baseline``. A ``--run`` gives one or more run folders (one
per seed): its first folder's exported student is measured here, and the results.json of each
folder gives the per-seed Spearman, selection score and training time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from attnkd.atomic import write_json

_STUDENT_TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"


def _pairs(spec: list[str]) -> dict[str, str]:
    out = {}
    for s in spec:
        name, sep, value = s.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"expected NAME=VALUE, got {s!r}")
        out[name] = value
    return out


def _seeds(folders: list[Path]) -> dict:
    rows = [json.loads((f / "results.json").read_text()) for f in folders]
    dev = [r["student"]["spearman"] for r in rows]
    return {
        "folders": [str(f) for f in folders],
        "seeds": [r.get("seed") for r in rows],
        "dev_spearman": dev,
        "dev_mean": statistics.mean(dev),
        "dev_std": statistics.stdev(dev) if len(dev) > 1 else 0.0,
        "retention": [r["retention"] for r in rows],
        "select_spearman": [r["student"]["select_spearman"] for r in rows],
        "best_step": [r["student"]["best_step"] for r in rows],
        "train_seconds": [r["train"]["seconds_this_session"] for r in rows],
        "teachers": rows[0].get("teachers"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="NAME=model (repeatable)")
    p.add_argument("--run", action="append", default=[], help="NAME=run_dir[,run_dir...]")
    p.add_argument("--cached", action="append", default=[], help="Spearman from the cache")
    p.add_argument("--baseline", default=None, help="speed-ups against this NAME")
    p.add_argument("--sentences", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from attnkd.data.benchmarks import read_stsb
    from attnkd.eval.speed import measure_throughput
    from attnkd.eval.sts import StsResult, sts_eval, sts_from_embeddings
    from attnkd.models.hub import TOKENIZER_FILES
    from attnkd.models.load import count_parameters, freeze, load_encoder
    from attnkd.tasks.sentence_teachers import teacher_targets

    def sts_result(spearman: float) -> StsResult:
        return StsResult(spearman=spearman, pearson=float("nan"), n=len(pairs))

    runs = {k: [Path(x) for x in v.split(",")] for k, v in _pairs(args.run).items()}
    specs = {**_pairs(args.model), **{k: str(v[0] / "student") for k, v in runs.items()}}
    pairs = read_stsb("dev")
    s1, s2, gold = ([getattr(x, f) for x in pairs] for f in ("sentence1", "sentence2", "score"))
    uniq = sorted(set(s1) | set(s2))
    models, toks, out = {}, {}, {"threads": args.threads, "models": {}}
    for name, spec in specs.items():
        has_tok = (
            any((Path(spec) / f).is_file() for f in TOKENIZER_FILES) or not Path(spec).is_dir()
        )
        m = load_encoder(spec, tokenizer=has_tok)
        tok = m.tokenizer or AutoTokenizer.from_pretrained(load_encoder(
            _STUDENT_TOKENIZER).path)  # fmt: skip
        models[name], toks[name] = freeze(m.model), tok
        if name in runs:  # scored by the run itself (same protocol), on this exported student
            spearman = json.loads((runs[name][0] / "results.json").read_text())["student"]
            r, source = sts_result(spearman["spearman"]), "run results.json"
        elif name in args.cached:
            emb = teacher_targets(spec, uniq, 128).embeddings
            r = sts_from_embeddings(dict(zip(uniq, emb)), s1, s2, gold)
            source = "embedding cache (this model's fingerprint)"
        else:
            r, source = sts_eval(m.model, tok, s1, s2, gold, max_length=128), "encoded in this run"
        out["models"][name] = {
            "model": spec,
            "params": count_parameters(m.model),
            "layers": m.model.config.num_hidden_layers,
            "width": m.model.config.hidden_size,
            "stsb_dev_spearman": r.spearman,
            "spearman_from": source,
        }
        print(f"{name}: STS-B dev {r.spearman:.2f}", flush=True)
    sents = [s for x in pairs for s in (x.sentence1, x.sentence2)][: args.sentences]
    speed = measure_throughput(models, toks, sents, args.batch_size, rounds=args.rounds)
    base = speed[args.baseline].sentences_per_s if args.baseline else None
    out.update(sentences=len(sents), batch_size=args.batch_size, rounds=args.rounds,
               baseline=args.baseline)  # fmt: skip
    print(
        f"{'model':22s} {'layers':>6s} {'params':>8s} {'STS-B':>6s} {'sent/s':>8s} {'speed-up':>8s}"
    )
    for name, r in speed.items():
        row = out["models"][name]
        row.update(sentences_per_s=r.sentences_per_s, rounds_sentences_per_s=r.rounds)
        row["speedup_vs_baseline"] = r.sentences_per_s / base if base else None
        print(f"{name:22s} {row['layers']:6d} {row['params'] / 1e6:7.1f}M "
              f"{row['stsb_dev_spearman']:6.2f} {r.sentences_per_s:8.1f} "
              f"{(row['speedup_vs_baseline'] or 0):7.2f}x")  # fmt: skip
    out["runs"] = {k: _seeds(v) for k, v in runs.items()}
    for k, v in out["runs"].items():
        print(f"{k}: STS-B dev {v['dev_mean']:.2f} ± {v['dev_std']:.2f} over {len(v['folders'])} "
              f"seeds, training {statistics.mean(v['train_seconds']):.0f} s each")  # fmt: skip
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
