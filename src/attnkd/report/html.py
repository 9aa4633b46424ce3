"""``attnkd report RUN_DIR``: one self-contained HTML page with plots for a distillation run.

Reads what the run folder holds and says what it lacks: ``metrics.jsonl`` (events of
:func:`attnkd.engine.loop.fit`; a line cut short by a killed run is skipped and reported),
``results.json`` (:func:`attnkd.distill.run_distill`), ``eval-*.json``
(:func:`attnkd.evaluate.evaluate_run`) and ``config.yaml`` (shown verbatim). Writes
``RUN_DIR/report/index.html`` and PNGs beside it, built in a temporary folder and swapped in,
so a reader never sees half a report. All text from the run is HTML-escaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from attnkd.atomic import atomic_dir
from attnkd.errors import AttnkdError

DEFAULT_SENTENCE = "A man is playing a guitar on the stage."
ATTENTION_NOTE = (
    "Attention rebuilt from the captured queries and keys, softmax(q k^T / sqrt(d)) (plus the "
    "relative-position bias in families that add one, e.g. MPNet) averaged over heads, as the "
    "attention losses see it. Rows are queries, columns keys."
)


@dataclass
class ReportModels:
    """Loaded models for the optional attention-diagnostics section."""

    teacher: Any
    student: Any
    tokenizer: Any
    sentences: list[str] = field(default_factory=lambda: [DEFAULT_SENTENCE])
    layers: list[tuple[int, int]] = field(default_factory=lambda: [(-1, -1)])
    """(teacher layer, student layer) pairs; negative counts from the end."""


@dataclass
class RunLog:
    """The events of ``metrics.jsonl`` as the final weights saw them."""

    train: list[dict] = field(default_factory=list)
    """``train`` events in step order; steps redone after a resume keep the later line."""
    evals: list[dict] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)
    status: str = "no events"
    notes: list[str] = field(default_factory=list)
    """Lines skipped and why."""


def read_run_log(path: str | Path) -> RunLog:
    """Parse ``metrics.jsonl``, tolerating a truncated last line and unreadable lines."""
    log = RunLog()
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            why = "is cut short (run killed while writing?)" if i == last else "is not JSON"
            log.notes.append(f"metrics.jsonl line {i + 1} {why}: skipped")
            continue
        step = ev.get("step") if isinstance(ev, dict) else None
        if not isinstance(step, int):
            log.notes.append(f"metrics.jsonl line {i + 1} has no integer step: skipped")
            continue
        kind = ev.get("event")
        if kind in ("start", "resume"):  # later lines redo steps past this one
            log.train = [e for e in log.train if e["step"] <= step]
            log.evals = [e for e in log.evals if e["step"] <= step]
            if kind == "resume":
                log.resumes.append(step)
            log.status = f"running or killed: no stop event after {kind} at step {step}"
        elif kind == "train":
            log.train.append(ev)
        elif kind == "eval" and isinstance(ev.get("metrics"), dict):
            log.evals.append(ev)
        elif kind == "stop":
            early = " (time budget reached)" if ev.get("stopped_early") else ""
            log.status = f"finished at step {step}{early}"
        elif kind == "interrupted":
            saved = "saved" if ev.get("saved") else "not saved"
            log.status = f"interrupted at step {step} (checkpoint {saved})"
    return log


def _read_json(path: Path, notes: list[str]) -> dict | None:
    if not path.exists():
        notes.append(f"{path.name} not found")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        notes.append(f"{path.name} is not valid JSON ({err}): ignored")
        return None
    return data if isinstance(data, dict) else None


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if _is_num(x) else "—"


def _times(x: Any, spec: str) -> str:
    return format(x, spec) + "×" if _is_num(x) else "—"


def _ratio(given: Any, num: Any, den: Any) -> Any:
    if _is_num(given):
        return given
    return num / den if _is_num(num) and _is_num(den) and den else None


def _headline(results: dict | None, evals: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """Rows (what, teacher, student, student/teacher) of the headline table."""
    rows = []
    src = [("end of training", results)] if results else []
    src += [("attnkd eval", e) for e in evals.values()]
    t_name = next((_get(d, "teacher", "name") for _, d in src if _get(d, "teacher", "name")), "")
    s_name = next((_get(d, "student", "path") for _, d in src if _get(d, "student", "path")), "")
    layers = _get(results, "student", "layers")
    s_name = s_name or (f"{layers} layers" if _is_num(layers) else "")
    rows.append(("model", str(t_name or "—"), str(s_name or "—"), ""))
    for label, d in src:
        split = d.get("eval_split") or d.get("split") or "?"
        if _is_num(_get(d, "teacher", "perplexity")):  # causal LM: lower is better
            t, s = _get(d, "teacher", "perplexity"), _get(d, "student", "perplexity")
            tokens = d.get("eval_tokens") or d.get("tokens")
            what = f"perplexity · NLL retention, perplexity ratio — {split}, " + (
                f"{tokens} tokens, " if _is_num(tokens) else ""
            )
            ratio = "perplexity " + _times(_ratio(d.get("perplexity_ratio"), s, t), ".2f")
            cell = f"{_fmt(d.get('retention'), '.1%')}, {ratio}"
            rows.append((what + label, _fmt(t, ".3f"), _fmt(s, ".3f"), cell))
            continue
        pairs = d.get("eval_pairs") or d.get("pairs")
        t, s = _get(d, "teacher", "spearman"), _get(d, "student", "spearman")
        ret = _fmt(_ratio(d.get("retention"), s, t), ".1%")
        what = f"Spearman · retention — {split}, " + (f"{pairs} pairs, " if _is_num(pairs) else "")
        rows.append((what + label, _fmt(t, ".4f"), _fmt(s, ".4f"), ret))
    for _, d in src:
        t, s = _get(d, "teacher", "params"), _get(d, "student", "params")
        if _is_num(t) or _is_num(s):
            size = _times(_ratio(d.get("size_ratio"), s, t), ".3f")
            rows.append(("parameters · size ratio", _fmt(t, ",d"), _fmt(s, ",d"), size))
            break
    for label, d in src:
        for key, unit in (("sentences_per_s", "sentences"), ("tokens_per_s", "tokens")):
            t, s = _get(d, "teacher", key), _get(d, "student", key)
            if _is_num(t) or _is_num(s):
                speed = _times(_ratio(d.get("speedup"), s, t), ".2f")
                split = d.get("split") or "?"
                what = f"{unit}/s · speedup — {split} {unit}, {label}"
                rows.append((what, _fmt(t, ",.1f"), _fmt(s, ",.1f"), speed))
    return rows


def _pareto_points(results: dict | None, evals: dict[str, dict]) -> tuple[str, list] | None:
    from attnkd.report.plots import ModelPoint

    split = _get(results, "eval_split")
    chosen = [(n, e) for n, e in evals.items() if e.get("split") == split] + list(evals.items())
    source, d = (f"attnkd eval, {chosen[0][0]}", chosen[0][1]) if chosen else ("run", results)
    if d is None:
        return None
    points = []
    for role in ("teacher", "student"):
        q = _get(d, role, "spearman")
        if _is_num(q):
            points.append(
                ModelPoint(role, q, _get(d, role, "params"), _get(d, role, "sentences_per_s"))
            )
    return source, points


def _median(xs: list) -> float | None:
    xs = sorted(x for x in xs if _is_num(x))
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2 if xs else None


def _curves(log: RunLog, key: str) -> tuple[list[int], list]:
    return [e["step"] for e in log.train], [e.get(key) for e in log.train]


def _figure(src: str, caption: str) -> str:
    return (
        f'<figure><img src="{escape(src)}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


_SCALARS = (
    ("lr", "learning rate", "Learning rate set by the schedule at each logged step.", False),
    ("grad_norm", "gradient norm", "Gradient norm before clipping, mean per logged window.", True),
)


def _train_figures(out: Path, log: RunLog) -> list[str]:
    """Loss (total and terms, log y), learning rate and gradient norm over steps."""
    from attnkd.report.plots import Curve, curves_png

    if not log.train:
        return []
    steps, loss = _curves(log, "loss")
    names = list(dict.fromkeys(n for e in log.train for n in (e.get("terms") or {})))
    curves = [Curve("total", steps, loss)]
    curves += [Curve(n, steps, [(e.get("terms") or {}).get(n) for e in log.train]) for n in names]
    info = curves_png(out / "loss.png", curves, "training loss and its terms", "loss", True)
    hidden = f"; {info.hidden} non-positive or missing values not shown" if info.hidden else ""
    figs = [_figure("loss.png", f"Loss per logged window, total and each term{hidden}.")]
    for key, title, caption, log_y in _SCALARS:
        curves_png(out / f"{key}.png", [Curve(key, *_curves(log, key))], title, title, log_y)
        figs.append(_figure(f"{key}.png", caption))
    return figs


def _eval_figures(
    out: Path, log: RunLog, results: dict | None, evals: dict[str, dict]
) -> list[str]:
    """Eval metrics over steps with the teacher's Spearman; the quality-vs-size/speed view."""
    from attnkd.report.plots import Curve, curves_png, pareto_png

    figs = []
    if log.evals:
        names = list(dict.fromkeys(n for e in log.evals for n in e["metrics"]))
        steps = [e["step"] for e in log.evals]
        curves = [Curve(n, steps, [e["metrics"].get(n) for e in log.evals]) for n in names]
        key = "perplexity" if _is_num(_get(results, "teacher", "perplexity")) else "spearman"
        t = _get(results, "teacher", key)
        hlines = {f"teacher {key}": t} if _is_num(t) else None
        title = "student evaluation during training"
        curves_png(out / "eval.png", curves, title, "metric", False, hlines)
        figs.append(_figure("eval.png", "Student metrics at each evaluation; dashed: the teacher."))
    chosen = _pareto_points(results, evals)
    if chosen and len(chosen[1]) >= 2:
        source, points = chosen
        try:
            pareto_png(out / "pareto.png", points, f"quality vs size and speed ({source})")
        except ValueError:  # neither parameters nor throughput known for both
            return figs
        cap = "Quality against size and throughput; filled points are Pareto-optimal."
        figs.append(_figure("pareto.png", cap))
    return figs


def _attention_figures(out: Path, models: ReportModels, notes: list[str]) -> list[str]:
    from attnkd.report.plots import attention_maps_png

    figs = []
    for i, sentence in enumerate(models.sentences):
        for j, (lt, ls) in enumerate(models.layers):
            name, args = f"attention_{i}_{j}.png", (models.tokenizer, sentence, lt, ls)
            try:
                m = attention_maps_png(models.teacher, models.student, *args, out / name)
            except (ValueError, IndexError) as err:
                notes.append(f"attention map for layers {lt}/{ls} not drawn: {err}")
                continue
            cap = (
                f"Teacher layer {m.layer_t} vs student layer {m.layer_s}, mean over heads; "
                f"mean row KL(teacher || student) = {m.mean_kl():.4f} nats."
            )
            figs.append(_figure(name, cap))
    return figs


def _figures(
    out: Path, log: RunLog, results: dict | None, evals: dict, models: ReportModels | None, notes
) -> dict[str, list[str]]:
    """Figures' HTML by section; no plots (and a note) when matplotlib is missing."""
    try:
        return {
            "train": _train_figures(out, log),
            "eval": _eval_figures(out, log, results, evals),
            "attention": _attention_figures(out, models, notes) if models else [],
        }
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "matplotlib":
            raise
        notes.append("no plots: matplotlib is not installed (pip install matplotlib)")
        return {"train": [], "eval": [], "attention": []}


CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
td:first-child,th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%}
figcaption{color:#555;font-size:.9em}pre{background:#f6f6f6;padding:1em;overflow-x:auto}
.note{color:#8a5a00}
"""


def _table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _page(run_dir: Path, out: Path, models: ReportModels | None) -> str:
    notes: list[str] = []
    results = _read_json(run_dir / "results.json", notes)
    evals = {}
    for p in sorted(run_dir.glob("eval-*.json")):
        if (d := _read_json(p, notes)) is not None:
            evals[p.name] = d
    if (run_dir / "metrics.jsonl").exists():
        log = read_run_log(run_dir / "metrics.jsonl")
        notes += log.notes
    else:
        log = RunLog(status="no metrics.jsonl")
        notes.append("metrics.jsonl not found: no training curves")
    figs = _figures(out, log, results, evals, models, notes)
    config = run_dir / "config.yaml"
    cfg = config.read_text(encoding="utf-8", errors="replace") if config.exists() else None
    if cfg is None:
        notes.append("config.yaml not found")
    name = _get(results, "name") or run_dir.name
    train = results.get("train", {}) if results else {}
    summary = [
        ("status", log.status),
        ("optimizer steps", _fmt(_get(train, "steps"), "d")),
        ("best step", _fmt(_get(results, "student", "best_step"), "d")),
        ("training seconds (last session)", _fmt(_get(train, "seconds_this_session"), ",.0f")),
        ("corpus sentences", _fmt(_get(train, "corpus_sentences"), ",d")),
        ("resumed at steps", ", ".join(map(str, log.resumes)) or "—"),
        ("train / eval events", f"{len(log.train)} / {len(log.evals)}"),
        ("median items/s", _fmt(_median([e.get("items_per_s") for e in log.train]), ",.1f")),
    ]
    parts = [
        f"<h1>Distillation report: {escape(str(name))}</h1>",
        f"<p>Run folder <code>{escape(str(run_dir))}</code></p>",
        "<h2>Teacher vs student</h2>",
        _table(_headline(results, evals), ("", "teacher", "student", "student / teacher")),
        "<h2>Training</h2>",
        _table(summary, ("", "value")),
        *figs["train"],
    ]
    if figs["eval"]:
        parts += ["<h2>Evaluation</h2>", *figs["eval"]]
    if figs["attention"]:
        parts += ["<h2>Attention diagnostics</h2>", f"<p>{escape(ATTENTION_NOTE)}</p>"]
        parts += figs["attention"]
    if notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in notes)
        parts.append(f'<h2>Notes</h2><ul class="note">{items}</ul>')
    if cfg is not None:
        parts.append(f"<h2>Config</h2><pre>{escape(cfg)}</pre>")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>attnkd report: {escape(str(name))}</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_report(run_dir: str | Path, models: ReportModels | None = None) -> Path:
    """Write ``run_dir/report/index.html`` with PNG plots beside it; returns the HTML path.

    ``models`` adds teacher-vs-student attention maps. Raises AttnkdError if ``run_dir`` is
    not a folder; missing files only shorten the report (listed under Notes).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AttnkdError(f"run folder not found: {run_dir}")
    target = run_dir / "report"
    with atomic_dir(target) as tmp:
        (tmp / "index.html").write_text(_page(run_dir, tmp, models), encoding="utf-8")
    return target / "index.html"
