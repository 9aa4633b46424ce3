"""An HTML page of conversion speed curves from ``bench/conversion_speed.py`` JSON files.

Each input is a bench file ``{"meta": {...}, "records": [{"model", "kind": "forward" | "decode",
"context", "speedup", "memory_ratio", ...}]}``. The page has three plots against context length
(log scale): the speed-up over the teacher of every converted model (forward and decoding), the
decoding tokens/s of the teacher and of each converted model, and the memory ratio (peak bytes for
a forward, cache bytes for decoding); below them a table of every record and each file's command.

    python -m attnkd.report.speed results/conversion_speed_smollm2.json \\
        --out results/conversion_speed_report
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from attnkd.atomic import atomic_dir
from attnkd.errors import AttnkdError

DPI = 110
KINDS = ("forward", "decode")


@dataclass
class SpeedRecord:
    """One bench record: converted ``model`` against the teacher at ``context`` tokens."""

    source: str
    model: str
    kind: str
    context: int
    speedup: float
    memory_ratio: float | None
    teacher_tokens_per_s: float | None = None
    converted_tokens_per_s: float | None = None


def read_speed_json(path: str | Path) -> tuple[dict, list[SpeedRecord]]:
    """The bench file's ``meta`` and its records; a file that is not one is refused naming it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AttnkdError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise AttnkdError(f"{path}: expected an object with a 'records' list "
                          "(written by bench/conversion_speed.py --json)")  # fmt: skip
    out = []
    for i, r in enumerate(doc["records"]):
        try:
            out.append(SpeedRecord(
                source=path.name, model=str(r["model"]), kind=str(r["kind"]),
                context=int(r["context"]), speedup=float(r["speedup"]),
                memory_ratio=None if r.get("memory_ratio") is None else float(r["memory_ratio"]),
                teacher_tokens_per_s=r.get("teacher_tokens_per_s"),
                converted_tokens_per_s=r.get("converted_tokens_per_s"),
            ))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise AttnkdError(f"{path}: records[{i}] needs model, kind, context and speedup "
                              f"as numbers ({e!r})") from e  # fmt: skip
    return doc.get("meta", {}), out


def _series(records: list[SpeedRecord], kind: str) -> dict[str, list[SpeedRecord]]:
    lines: dict[str, list[SpeedRecord]] = {}
    for r in records:
        if r.kind == kind:
            lines.setdefault(r.model, []).append(r)
    return {m: sorted(rs, key=lambda r: r.context) for m, rs in lines.items()}


def _axes(title: str, ylabel: str):
    fig = Figure(figsize=(6.4, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, ax, path: Path) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)


def _plot_speedup(records: list[SpeedRecord], path: Path) -> None:
    fig, ax = _axes("speed-up over the teacher (teacher time / converted time)", "speed-up (×)")
    for kind, style in zip(KINDS, ("-o", "--s"), strict=True):
        for model, rs in _series(records, kind).items():
            ax.plot([r.context for r in rs], [r.speedup for r in rs], style,
                    label=f"{model} · {kind}".replace("$", r"\$"))  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8)
    _save(fig, ax, path)


def _plot_decode(records: list[SpeedRecord], path: Path) -> None:
    fig, ax = _axes("decoding at batch 1", "tokens/s")
    teacher: dict[int, float] = {}
    for model, rs in _series(records, "decode").items():
        pts = [(r.context, r.converted_tokens_per_s) for r in rs if r.converted_tokens_per_s]
        if pts:
            ax.plot(*zip(*pts, strict=True), "-o", label=model.replace("$", r"\$"))
        teacher.update({r.context: r.teacher_tokens_per_s for r in rs if r.teacher_tokens_per_s})
    if teacher:
        xs = sorted(teacher)
        ax.plot(xs, [teacher[x] for x in xs], "-k^", label="teacher")
    ax.set_ylim(bottom=0)
    _save(fig, ax, path)


def _plot_memory(records: list[SpeedRecord], path: Path) -> None:
    fig, ax = _axes("memory: converted / teacher (forward peak, decoding cache)", "ratio")
    ax.set_yscale("log")
    for kind, style in zip(KINDS, ("-o", "--s"), strict=True):
        for model, rs in _series(records, kind).items():
            pts = [(r.context, r.memory_ratio) for r in rs if r.memory_ratio]
            if pts:
                ax.plot(*zip(*pts, strict=True), style,
                        label=f"{model} · {kind}".replace("$", r"\$"))  # fmt: skip
    _save(fig, ax, path)


def _table(records: list[SpeedRecord]) -> str:
    head = ("file", "model", "kind", "context", "speed-up", "memory ratio")
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in (
            r.source, r.model, r.kind, r.context, f"{r.speedup:.2f}×",
            "–" if r.memory_ratio is None else f"{r.memory_ratio:.4f}",
        )) + "</tr>"
        for r in sorted(records, key=lambda r: (r.model, r.kind, r.context))
    )  # fmt: skip
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + rows
            + "</table>")  # fmt: skip


def speed_report(paths: list[str | Path], out: str | Path) -> Path:
    """Write ``out/index.html`` with ``speedup.png``, ``decode.png`` and ``memory.png`` from the
    bench files ``paths`` (atomically: ``out`` is replaced whole). Returns the HTML path."""
    if not paths:
        raise AttnkdError("speed report: give at least one bench JSON file")
    metas, records = [], []
    for p in paths:
        meta, recs = read_speed_json(p)
        metas.append((Path(p).name, meta))
        records += recs
    if not records:
        raise AttnkdError(f"speed report: no records in {', '.join(map(str, paths))}")
    out = Path(out)
    with atomic_dir(out) as tmp:
        _plot_speedup(records, tmp / "speedup.png")
        _plot_decode(records, tmp / "decode.png")
        _plot_memory(records, tmp / "memory.png")
        commands = "".join(
            f"<li><code>{escape(name)}</code>: <code>{escape(str(m.get('command', '?')))}</code>"
            f" (threads {escape(str(m.get('threads', '?')))}, load before "
            f"{escape(str(m.get('loadavg_before', '?')))})</li>"
            for name, m in metas
        )
        html = (
            "<!doctype html><meta charset='utf-8'><title>attnkd conversion speed</title>"
            "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}"
            "td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
            "<h1>Conversion speed</h1><p>Converted model against the teacher, measured side by "
            "side in one run per file.</p>"
            "<img src='speedup.png'><img src='decode.png'><img src='memory.png'>"
            f"<h2>Records</h2>{_table(records)}<h2>Commands</h2><ul>{commands}</ul>"
        )
        (tmp / "index.html").write_text(html, encoding="utf-8")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="HTML speed curves from bench/conversion_speed.py JSON")
    p.add_argument("json", nargs="+", help="bench files (--json of bench/conversion_speed.py)")
    p.add_argument("--out", required=True, help="report folder (replaced whole)")
    args = p.parse_args(argv)
    try:
        path = speed_report(args.json, args.out)
    except AttnkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
