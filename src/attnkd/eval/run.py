"""``attnkd eval``: quality, size and speed of a student against its teacher, side by side."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from attnkd.errors import AttnkdError


def evaluate_run(
    run: str | Path,
    teacher: str | None = None,
    split: str = "stsb:dev",
    data_dir: str | None = None,
    speed_sentences: int = 512,
    write: bool = True,
) -> dict:
    """Evaluate ``run`` (a run folder with ``student/`` or a model folder) and its teacher on the
    same STS split; encode throughput of both measured in one interleaved run."""
    from attnkd.config.io import load_config
    from attnkd.config.schema import DistillConfig
    from attnkd.distill import eval_pairs
    from attnkd.eval.speed import measure_throughput
    from attnkd.eval.sts import sts_eval
    from attnkd.models.load import count_parameters, freeze, load_encoder

    run = Path(run)
    student_dir = run / "student" if (run / "student" / "config.json").exists() else run
    if not (student_dir / "config.json").exists():
        raise AttnkdError(f"{run}: expected a run folder with student/ or a model folder")
    cfg = load_config(run / "config.yaml") if (run / "config.yaml").exists() else DistillConfig()
    cfg.data.eval_task = split
    if data_dir:
        cfg.data.data_dir = data_dir
    pairs = eval_pairs(cfg)
    t = load_encoder(teacher or cfg.teacher.name)
    s = load_encoder(str(student_dir), tokenizer=False)
    freeze(t.model)
    freeze(s.model)
    tok = t.tokenizer
    res_t = sts_eval(t.model, tok, pairs.sentences1, pairs.sentences2, pairs.scores)
    res_s = sts_eval(s.model, tok, pairs.sentences1, pairs.sentences2, pairs.scores)
    sents = (pairs.sentences1 + pairs.sentences2)[:speed_sentences]
    speed = measure_throughput({"teacher": t.model, "student": s.model}, tok, sents)
    out = {
        "split": split,
        "pairs": len(pairs.scores),
        "teacher": {
            "name": teacher or cfg.teacher.name,
            "spearman": res_t.spearman,
            "params": count_parameters(t.model),
            "sentences_per_s": speed["teacher"].sentences_per_s,
        },  # fmt: skip
        "student": {
            "path": str(student_dir),
            "spearman": res_s.spearman,
            "params": count_parameters(s.model),
            "sentences_per_s": speed["student"].sentences_per_s,
        },  # fmt: skip
        "retention": res_s.spearman / res_t.spearman,
        "speedup": speed["student"].sentences_per_s / speed["teacher"].sentences_per_s,
        "size_ratio": count_parameters(s.model) / count_parameters(t.model),
        "throughput_rounds": {k: asdict(v)["rounds"] for k, v in speed.items()},
    }
    if write and (run / "config.yaml").exists():
        tmp = run / f"eval-{split.replace(':', '_')}.json.tmp"
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.replace(run / f"eval-{split.replace(':', '_')}.json")
    return out
