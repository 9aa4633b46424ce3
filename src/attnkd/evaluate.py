"""``attnkd eval``: quality, size and speed of a student against its teacher, side by side.

Run-level like :mod:`attnkd.distill`: it rebuilds a run's task splits (:mod:`attnkd.tasks`) and
scores them with the metrics of :mod:`attnkd.eval`, which depend on no task.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from attnkd.atomic import write_json
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
    from attnkd.eval.speed import measure_throughput
    from attnkd.eval.sts import sts_eval
    from attnkd.models.load import count_parameters, freeze, load_encoder
    from attnkd.tasks.sentence import eval_pairs

    run = Path(run)
    student_dir = run / "student" if (run / "student" / "config.json").exists() else run
    if not (student_dir / "config.json").exists():
        raise AttnkdError(f"{run}: expected a run folder with student/ or a model folder")
    cfg = load_config(run / "config.yaml") if (run / "config.yaml").exists() else DistillConfig()
    if data_dir:
        cfg.data.data_dir = data_dir
    if cfg.task == "causal_lm":
        out = evaluate_lm(cfg, student_dir, teacher or cfg.teacher.name, split)
        if write and (run / "config.yaml").exists():
            _write(run / f"eval-lm-{out['split']}.json", out)
        return out
    cfg.data.eval_task = split
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
        _write(run / f"eval-{split.replace(':', '_')}.json", out)
    return out


def evaluate_lm(cfg, student_dir: Path, teacher: str, split: str = "eval") -> dict:
    """Perplexity of a causal-LM student and its teacher on the run's held-out token blocks
    ('eval', or 'select': the blocks that picked the checkpoint), and forward tokens/s of both
    measured side by side."""
    from attnkd.eval.perplexity import perplexity
    from attnkd.eval.speed import measure_token_throughput
    from attnkd.models.load import count_parameters, freeze, load_causal_lm
    from attnkd.tasks.causal_lm import lm_splits

    split = "eval" if split.startswith("stsb") else split
    if split not in ("eval", "select"):
        raise AttnkdError(f"causal_lm runs are evaluated on 'eval' or 'select', not '{split}'")
    t = load_causal_lm(teacher)
    s = load_causal_lm(str(student_dir), tokenizer=False)
    freeze(t.model)
    freeze(s.model)
    blocks = getattr(lm_splits(cfg, t.tokenizer), split)
    res_t, res_s = perplexity(t.model, blocks), perplexity(s.model, blocks)
    speed = measure_token_throughput({"teacher": t.model, "student": s.model}, blocks[:8])
    return {
        "split": split,
        "tokens": res_s.tokens,
        "teacher": {
            "name": teacher,
            "perplexity": res_t.ppl,
            "params": count_parameters(t.model),
            "tokens_per_s": speed["teacher"].tokens_per_s,
        },  # fmt: skip
        "student": {
            "path": str(student_dir),
            "perplexity": res_s.ppl,
            "params": count_parameters(s.model),
            "tokens_per_s": speed["student"].tokens_per_s,
        },  # fmt: skip
        "retention": res_t.nll / res_s.nll,
        "speedup": speed["student"].tokens_per_s / speed["teacher"].tokens_per_s,
        "size_ratio": count_parameters(s.model) / count_parameters(t.model),
        "throughput_rounds": {k: v.rounds for k, v in speed.items()},
    }


def _write(path: Path, obj: dict) -> None:
    write_json(path, obj)
