"""``attnkd eval``: quality, size and speed of a student against its teacher, side by side.

Run-level like :mod:`attnkd.distill`: it rebuilds a run's task splits (:mod:`attnkd.tasks`) and
scores them with the metrics of :mod:`attnkd.eval`, which depend on no task.

The split is a known benchmark split (:mod:`attnkd.eval.splits`, e.g. ``stsb:test``,
``wikitext2:test``) or one the run defines: ``eval`` and ``select`` (the run's evaluation and
selection splits; for causal_lm runs its held-out token blocks) and ``stsb:val``. Each model's
entry holds its metrics by name, ``params`` and ``throughput`` (``throughput_unit`` says of
what), measured for both models in one interleaved run.
"""

from __future__ import annotations

from pathlib import Path

from attnkd.atomic import write_json
from attnkd.errors import AttnkdError, ConfigError

RUN_SPLITS = {"sentence": ("eval", "select", "stsb:val"), "causal_lm": ("eval", "select")}
"""Splits defined by the run itself, per task."""
DEFAULT_SPLIT = {"sentence": "stsb:dev", "causal_lm": "eval"}


def evaluate_run(
    run: str | Path,
    teacher: str | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    speed_sentences: int = 512,
    write: bool = True,
    json_path: str | Path | None = None,
) -> dict:
    """Evaluate ``run`` (a run folder with ``student/``, or a model folder, read as a sentence
    model) and its teacher on ``split`` (default: ``stsb:dev`` / the causal-LM ``eval`` blocks).

    Writes ``eval-<split>.json`` in a run folder (``write``) and the same dict to ``json_path``.
    """
    from attnkd.config.io import load_config
    from attnkd.config.schema import DistillConfig
    from attnkd.eval.splits import resolve_split

    run = Path(run)
    student_dir = run / "student" if (run / "student" / "config.json").exists() else run
    if not (student_dir / "config.json").exists():
        raise AttnkdError(f"{run}: expected a run folder with student/ or a model folder")
    has_config = (run / "config.yaml").exists()
    cfg = load_config(run / "config.yaml") if has_config else DistillConfig()
    if data_dir:
        cfg.data.data_dir = data_dir
    split = split or DEFAULT_SPLIT.get(cfg.task, "eval")
    own = RUN_SPLITS.get(cfg.task, ())
    known = None if split in own else resolve_split(split, cfg.task, cfg.data.data_dir, own)
    teacher = teacher or cfg.teacher.name
    if cfg.task == "causal_lm":
        out = evaluate_lm(cfg, student_dir, teacher, split, known)
    else:
        out = evaluate_sentence(cfg, student_dir, teacher, split, known, speed_sentences)
    if known is not None:
        out["file"] = str(known.file(cfg.data.data_dir))
        out["in_training_sources"] = [s for s in cfg.data.train_sources if s in known.sources]
    if write and has_config:
        prefix = "eval-lm-" if cfg.task == "causal_lm" else "eval-"
        _write(run / f"{prefix}{out['split'].replace(':', '_')}.json", out)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        _write(Path(json_path), out)
    return out


def _side_by_side(t_model, s_model, metrics: dict, speed: dict, unit: str) -> dict:
    from attnkd.models.load import count_parameters

    key = f"{unit}_per_s"
    pt, ps = count_parameters(t_model), count_parameters(s_model)
    rate = {role: getattr(speed[role], key) for role in ("teacher", "student")}
    out = {"throughput_unit": f"{unit}/s"}
    for role, params in (("teacher", pt), ("student", ps)):
        out[role] = {**metrics[role], "params": params, "throughput": rate[role], key: rate[role]}
    out["speedup"] = rate["student"] / rate["teacher"]
    out["size_ratio"] = ps / pt
    out["throughput_rounds"] = {k: v.rounds for k, v in speed.items()}
    return out


def _sts_pairs(cfg, split: str, known):
    from attnkd.tasks.sentence import EvalPairs, eval_pairs

    if known is None:
        task = {"eval": cfg.data.eval_task, "select": cfg.data.select_task}.get(split, split)
        return eval_pairs(cfg, task)
    pairs = known.read(cfg.data.data_dir)
    return EvalPairs(split, [p.sentence1 for p in pairs], [p.sentence2 for p in pairs],
                     [p.score for p in pairs])  # fmt: skip


def evaluate_sentence(
    cfg, student_dir: Path, teacher: str, split: str, known=None, speed_sentences: int = 512
) -> dict:
    """STS Spearman and Pearson (x100) of teacher and student on one split; sentences/s."""
    from attnkd.eval.speed import measure_throughput
    from attnkd.eval.sts import sts_eval
    from attnkd.models.load import freeze, load_encoder

    pairs = _sts_pairs(cfg, split, known)
    t = load_encoder(teacher)
    s = _student(student_dir, load_encoder)
    freeze(t.model)
    freeze(s.model)
    tok = t.tokenizer
    res = {role: sts_eval(m.model, tok, pairs.sentences1, pairs.sentences2, pairs.scores)
           for role, m in (("teacher", t), ("student", s))}  # fmt: skip
    sents = (pairs.sentences1 + pairs.sentences2)[:speed_sentences]
    speed = measure_throughput({"teacher": t.model, "student": s.model}, tok, sents)
    metrics = {role: {"spearman": r.spearman, "pearson": r.pearson} for role, r in res.items()}
    out = {"split": pairs.name if known is None else split, "pairs": len(pairs.scores)}
    out.update(_side_by_side(t.model, s.model, metrics, speed, "sentences"))
    out["teacher"]["name"], out["student"]["path"] = teacher, str(student_dir)
    out["retention"] = res["student"].spearman / res["teacher"].spearman
    return out


def evaluate_lm(cfg, student_dir: Path, teacher: str, split: str = "eval", known=None) -> dict:
    """Perplexity of a causal-LM student and its teacher on the run's held-out token blocks
    ('eval', or 'select': the blocks that picked the checkpoint) or on a known text split (its
    file tokenised as one document, cut into blocks of ``data.max_length``); forward tokens/s
    of both measured side by side."""
    from attnkd.eval.perplexity import perplexity
    from attnkd.eval.speed import measure_token_throughput
    from attnkd.models.load import freeze, load_causal_lm
    from attnkd.tasks.causal_lm import lm_splits

    if known is None and split not in RUN_SPLITS["causal_lm"]:
        raise ConfigError("--split", f"causal_lm runs score 'eval', 'select' or a text split, "
                          f"not '{split}'")  # fmt: skip
    t = load_causal_lm(teacher)
    s = _student(student_dir, load_causal_lm)
    freeze(t.model)
    freeze(s.model)
    if known is None:
        blocks = getattr(lm_splits(cfg, t.tokenizer), split)
    else:
        blocks = document_blocks(t.tokenizer, known.read(cfg.data.data_dir), cfg.data.max_length)
    res = {"teacher": perplexity(t.model, blocks), "student": perplexity(s.model, blocks)}
    speed = measure_token_throughput({"teacher": t.model, "student": s.model}, blocks[:8])
    metrics = {role: {"perplexity": r.ppl, "nll": r.nll} for role, r in res.items()}
    out = {"split": split, "tokens": res["student"].tokens, "block_size": int(blocks.shape[1])}
    out.update(_side_by_side(t.model, s.model, metrics, speed, "tokens"))
    out["teacher"]["name"], out["student"]["path"] = teacher, str(student_dir)
    out["retention"] = res["teacher"].nll / res["student"].nll  # NLL ratio, teacher / student
    out["perplexity_ratio"] = res["student"].ppl / res["teacher"].ppl  # student / teacher
    return out


def document_blocks(tokenizer, text: str, block_size: int):
    """``text`` as one token stream (see :func:`attnkd.data.lm.tokenize_stream`) cut into
    ``len // block_size`` consecutive blocks (num_blocks, block_size); the tail is dropped."""
    import torch

    from attnkd.data.lm import tokenize_stream

    ids = tokenize_stream(tokenizer, [text])
    n = len(ids) // block_size
    if n < 1:
        raise AttnkdError(f"the split gives {len(ids)} tokens, fewer than one block of "
                          f"{block_size}")  # fmt: skip
    return torch.from_numpy(ids[: n * block_size].reshape(n, block_size))


def _student(folder: Path, loader):
    """The student of a run: a converted model (``conversion.json``, attnkd.convert) or a
    standard Hugging Face folder read by ``loader``."""
    if (folder / "conversion.json").exists():
        from types import SimpleNamespace

        from attnkd.convert.io import load_converted

        return SimpleNamespace(model=load_converted(folder))
    return loader(str(folder), tokenizer=False)


def _write(path: Path, obj: dict) -> None:
    write_json(path, obj)
