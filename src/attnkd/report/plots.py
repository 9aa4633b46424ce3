"""PNG plots of a distillation run: curves, a quality-vs-size/speed Pareto view, attention maps.

Each ``*_png`` function takes plain numbers (or models, for attention), draws one figure on a
matplotlib Agg canvas (no pyplot, so no global backend state) and writes ``path`` atomically.
:mod:`attnkd.report.html` decides what to draw. Labels that come from data are shown literally
(``$`` never starts mathtext).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from torch import Tensor, nn

from attnkd.atomic import atomic_file
from attnkd.capture import Capture, Tap, split_heads
from attnkd.losses.position_bias import RelativePositionBias
from attnkd.models.adapters import adapter_for, geometry, resolve_layer

DPI = 110


@dataclass
class Curve:
    """One line of a plot: ``values[i]`` at ``steps[i]``; None marks a missing/non-finite value."""

    label: str
    steps: list[int]
    values: list[float | None]


@dataclass
class PlotInfo:
    """What was drawn, for the caption."""

    path: Path
    log_y: bool
    hidden: int
    """Points left out: missing/non-finite, or not positive on a log axis."""


@dataclass
class ModelPoint:
    """One model in the Pareto view."""

    name: str
    quality: float
    params: int | None = None
    sentences_per_s: float | None = None


def _text(s: object) -> str:
    """Data text shown literally by matplotlib (escape the mathtext delimiter)."""
    return str(s).replace("$", r"\$")


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def curves_png(
    path: str | os.PathLike,
    curves: Sequence[Curve],
    title: str,
    ylabel: str,
    log_y: bool = False,
    hlines: dict[str, float] | None = None,
) -> PlotInfo:
    """Lines over optimizer steps, plus labelled horizontal reference lines (e.g. the teacher).

    On a log axis non-positive values are left out; if none is positive the axis is linear.
    """
    keep = [[(s, v) for s, v in zip(c.steps, c.values) if _finite(v)] for c in curves]
    positive = [[(s, v) for s, v in pts if v > 0] for pts in keep]
    log_y = log_y and any(positive) and all(v > 0 for v in (hlines or {}).values())
    pts_all = positive if log_y else keep
    hidden = sum(len(c.values) for c in curves) - sum(len(p) for p in pts_all)
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for c, pts in zip(curves, pts_all):
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=_text(c.label), lw=1.4, marker="." if len(pts) < 40 else None)
    for i, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, color="black", ls="--", lw=1.0, alpha=0.4 + 0.3 * (i == 0))
        ax.annotate(
            _text(f"{label} = {y:.4g}"),
            (1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(-4, -3),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=8,
        )
    if log_y:
        ax.set_yscale("log")
    ax.set_title(_text(title))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(_text(ylabel) + (" (log scale)" if log_y else ""))
    ax.grid(True, which="major", alpha=0.3)
    if any(pts_all) and (len(curves) > 1 or hlines):
        ax.legend(fontsize=8, loc="best")
    return PlotInfo(_save(fig, path), log_y, hidden)


def pareto_front(xs: Sequence[float], ys: Sequence[float], lower_x_better: bool) -> list[bool]:
    """Which points no other point dominates (higher y is better; x better when lower or higher).

    A point is dominated when another is at least as good on both axes and better on one.
    """
    sign = -1.0 if lower_x_better else 1.0
    front = []
    for i in range(len(xs)):
        xi, yi = sign * xs[i], ys[i]
        beaten = any(
            sign * xs[j] >= xi and ys[j] >= yi and (sign * xs[j] > xi or ys[j] > yi)
            for j in range(len(xs))
            if j != i
        )
        front.append(not beaten)
    return front


@FuncFormatter
def _plain_log_label(v: float, _pos: object) -> str:
    """Label log-axis ticks 1, 2, 5 x 10^n in plain digits ("20", "0.5"), leave the rest blank."""
    if v <= 0:
        return ""
    lead = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}" if any(abs(lead - d) < 1e-6 for d in (1, 2, 5)) else ""


def pareto_png(path: str | os.PathLike, points: Sequence[ModelPoint], title: str) -> Path:
    """Quality against parameters (smaller is better) and against throughput (faster is better).

    A panel is drawn when at least two points have its x value; filled markers lie on the
    Pareto front, which is joined by a dashed line.
    """
    panels = [
        ("params", "parameters (millions, log scale)", True, 1e-6),
        ("sentences_per_s", "throughput (sentences/s, log scale)", False, 1.0),
    ]
    panels = [p for p in panels if sum(_finite(getattr(m, p[0])) for m in points) >= 2]
    if not panels:
        raise ValueError("pareto_png needs two points with params or throughput")
    fig = Figure(figsize=(5.0 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (attr, xlabel, lower_better, scale) in zip(axes, panels):
        pts = [m for m in points if _finite(getattr(m, attr)) and _finite(m.quality)]
        xs = [getattr(m, attr) * scale for m in pts]
        ys = [m.quality for m in pts]
        front = pareto_front(xs, ys, lower_better)
        line = sorted((x, y) for x, y, f in zip(xs, ys, front) if f)
        if len(line) > 1:
            ax.plot(*zip(*line), ls="--", color="grey", lw=1, label="Pareto front")
        for i, (m, x, y, f) in enumerate(zip(pts, xs, ys, front)):
            color = f"C{i % 10}"
            ax.scatter([x], [y], s=70, color=color if f else "white", edgecolors=color, zorder=3)
            ax.annotate(_text(m.name), (x, y), xytext=(6, -12), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_plain_log_label)
        ax.xaxis.set_minor_formatter(_plain_log_label)
        ax.margins(x=0.25, y=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("quality (Spearman)")
        ax.grid(True, alpha=0.3)
        ax.set_title("better: " + ("up and left" if lower_better else "up and right"), fontsize=9)
    fig.suptitle(_text(title))
    return _save(fig, path)


@dataclass
class AttentionMaps:
    """Head-averaged attention of one sentence in one teacher and one student layer."""

    tokens: list[str]
    teacher: Tensor
    """(seq, seq): row i is query token i's attention over the keys, mean over heads."""
    student: Tensor
    layer_t: int
    layer_s: int

    def mean_kl(self) -> float:
        """Mean over query rows of KL(teacher row || student row), in nats."""
        t, s = self.teacher.double(), self.student.double()
        terms = torch.where(t > 0, t * (t.log() - s.clamp_min(1e-300).log()), 0.0)
        return float(terms.sum(-1).mean())


def head_mean_attention(model: nn.Module, inputs: dict[str, Tensor], layer: int) -> Tensor:
    """softmax(q k^T / sqrt(head_dim) [+ bias]) of ``layer``, averaged over heads: (seq, seq).

    q/k come from :class:`attnkd.capture.Capture` on the projections (after RoPE in rotary
    families), exactly what the attention losses see, and families with a relative-position
    bias (MPNet) add it as their attention does, so the map is the model's own attention.
    ``inputs`` hold one sequence; padded keys get 0, GQA key heads are shared by query groups.
    """
    adapter = adapter_for(model)  # rotary families: the captured q/k are already rotated
    g = geometry(model.config)
    layer = resolve_layer(layer, g.num_layers)
    taps = [Tap("q", layer), Tap("k", layer)]
    if g.position_bucket is not None:
        taps.append(Tap("position_bias", layer))
    with Capture(model, taps, adapter) as cap:
        model(**inputs)
    q = split_heads(cap.taps.get("q", layer).float(), g.num_heads)
    k = split_heads(cap.taps.get("k", layer).float(), g.num_kv_heads)
    k = k.repeat_interleave(g.num_heads // g.num_kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2))[0] * q.shape[-1] ** -0.5  # (heads, seq, seq)
    seq = scores.shape[-1]
    if g.position_bucket is not None:
        table = cap.taps.get("position_bias", layer).float()
        scores = scores + RelativePositionBias(table, g.position_bucket).dense(seq)
    blocked = ~inputs["attention_mask"][0].bool().view(1, 1, seq)
    if adapter.causal:
        blocked = blocked | torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(blocked, -math.inf).softmax(-1).mean(0)


def attention_maps(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer: Any,
    sentence: str,
    layer_t: int,
    layer_s: int,
    max_tokens: int = 48,
) -> AttentionMaps:
    """Head-averaged teacher and student attention for one sentence (both see the same tokens)."""
    enc = tokenizer(sentence, return_tensors="pt", truncation=True, max_length=max_tokens)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask")}
    maps = []
    for model, layer in ((teacher, layer_t), (student, layer_s)):
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                on_device = {k: v.to(device) for k, v in inputs.items()}
                maps.append(head_mean_attention(model, on_device, layer).cpu())
        finally:
            model.train(was_training)
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    n_t = int(teacher.config.num_hidden_layers)
    n_s = int(student.config.num_hidden_layers)
    return AttentionMaps(
        tokens, maps[0], maps[1], resolve_layer(layer_t, n_t), resolve_layer(layer_s, n_s)
    )


def attention_maps_png(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer: Any,
    sentence: str,
    layer_t: int,
    layer_s: int,
    path: str | os.PathLike,
) -> AttentionMaps:
    """Draw teacher vs student attention (mean over heads) for one sentence, and their difference.

    Attention is rebuilt from q/k captured by hooks (:func:`head_mean_attention`), so it works
    with fused attention. Layers may be negative (-1 = last). Both models read the same tokens
    (``tokenizer``, at most 48). The title gives the mean row KL(teacher || student), the
    quantity MiniLM's attention loss minimises (Wang et al. 2020). Returns the maps.
    """
    maps = attention_maps(teacher, student, tokenizer, sentence, layer_t, layer_s)
    n = len(maps.tokens)
    side = min(max(3.2, 0.22 * n + 1.6), 9.0)
    fig = Figure(figsize=(3 * side + 1.5, 0.9 * side + 0.7), layout="constrained")
    axes = fig.subplots(1, 3)
    vmax = float(max(maps.teacher.max(), maps.student.max()))
    diff = maps.student - maps.teacher
    dmax = max(float(diff.abs().max()), 1e-6)
    panels = [
        (maps.teacher, f"teacher, layer {maps.layer_t}", "viridis", 0.0, vmax),
        (maps.student, f"student, layer {maps.layer_s}", "viridis", 0.0, vmax),
        (diff, "student - teacher", "RdBu_r", -dmax, dmax),
    ]
    labels = [_text(t) for t in maps.tokens]
    fontsize = 8 if n <= 24 else 6
    for ax, (m, title, cmap, lo, hi) in zip(axes, panels):
        im = ax.imshow(m.numpy(), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), labels, fontsize=fontsize)
        ax.set_xlabel("key")
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0].set_ylabel("query")
    short = sentence if len(sentence) <= 90 else sentence[:87] + "..."
    fig.suptitle(
        _text(f'"{short}": mean over heads; KL(teacher || student) = {maps.mean_kl():.4f} nats'),
        fontsize=10,
    )
    _save(fig, path)
    return maps
