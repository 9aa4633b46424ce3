"""Comparable perplexity: named window protocols on text as written.

Protocol ``windows:W:stride=S`` (S <= W): the text is tokenised once, as a whole, without
special tokens; window k covers tokens ``[k S, min(k S + W, N))`` and is run on its own; it scores
the positions no earlier window scored (``>= k S + W - S`` for k > 0, i.e. the last S tokens,
``>= 1`` for the first window). With S < W every token but the first is scored exactly once, with
at least ``W - S`` tokens of context; with S = W (non-overlapping windows) the first token of each
window has no context in it and is not scored. The result counts the scored tokens.

Text as written (:func:`text_as_written`): ``tinyshakespeare`` is ``input.txt``, ``wikitext2`` is
``wiki.valid.tokens`` (with its ``@-@`` splits and ``<unk>``), byte for byte; the held-out part is
the last ``tail`` (default 10%) of its characters. This is the protocol of the reference figures
(SmolLM2-135M-Instruct, ``windows:512:stride=512``: Tiny Shakespeare 34.8, WikiText-2 valid 31.3).

The training-time protocol (``blocks``: the run's token stream cut into disjoint blocks of
``data.max_length``, eval = the last blocks, see :mod:`attnkd.tasks.causal_lm`) stays what runs
report during distillation; its figures are labelled ``blocks`` and are not comparable to
published ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkd.data.benchmarks import PathLike, benchmark_file
from attnkd.errors import AttnkdError, ConfigError

TEXTS = {
    "tinyshakespeare": ("tinyshakespeare", "input.txt"),
    "wikitext2": ("wikitext2", "wiki.valid.tokens"),
}
DEFAULT_PROTOCOL = "windows:512:stride=512"
_SPEC = re.compile(r"^windows:(\d+)(?::stride=(\d+))?$")


@dataclass(frozen=True)
class WindowProtocol:
    window: int
    stride: int

    @property
    def name(self) -> str:
        return f"windows:{self.window}:stride={self.stride}"


def parse_protocol(spec: str) -> WindowProtocol:
    """``'windows:W[:stride=S]'`` (S defaults to W) -> :class:`WindowProtocol`."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise ConfigError("protocol", f"unknown protocol {spec!r}; expected 'windows:W:stride=S'")
    window = int(m.group(1))
    stride = int(m.group(2) or window)
    if window < 2 or not 1 <= stride <= window:
        raise ConfigError("protocol", f"{spec!r}: need window >= 2 and 1 <= stride <= window")
    return WindowProtocol(window, stride)


def text_as_written(name: str, data_dir: PathLike | None = None) -> str:
    """The whole file of a known text (``tinyshakespeare``, ``wikitext2``) or ``file:PATH``."""
    if name.startswith("file:"):
        path = Path(name[5:]).expanduser()
    elif name in TEXTS:
        path = benchmark_file(*TEXTS[name], data_dir)
    else:
        raise ConfigError("text", f"unknown text {name!r}; expected {sorted(TEXTS)} or file:PATH")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AttnkdError(f"cannot read {path}: {err}") from err


def held_out(text: str, tail: float = 0.1) -> str:
    """The last ``round(tail * len(text))`` characters of ``text``."""
    if not 0.0 < tail <= 1.0:
        raise ConfigError("tail", f"must be in (0, 1], got {tail}")
    return text[len(text) - round(tail * len(text)) :]


def window_spans(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` of every window over ``n`` tokens (positions < end)."""
    spans: list[tuple[int, int, int]] = []
    begin, prev_end = 0, 0
    while True:
        end = min(begin + window, n)
        spans.append((begin, end, max(begin + 1, prev_end)))
        if end >= n:
            return spans
        prev_end, begin = end, begin + stride


@dataclass
class WindowPerplexity:
    protocol: str
    ppl: float
    nll: float
    """Mean NLL (nats) over the scored tokens."""
    scored_tokens: int
    total_tokens: int
    windows: int


@torch.no_grad()
def window_perplexity(model: nn.Module, ids: Tensor, protocol: WindowProtocol) -> WindowPerplexity:
    """Perplexity of a causal LM on the 1-D token ids ``ids`` under ``protocol``; each window is
    one forward (batch 1, eval mode restored afterwards), log-softmax float32, sums float64."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() < 2:
        raise AttnkdError(f"need at least 2 tokens to score, got {ids.numel()}")
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    total, count = 0.0, 0
    spans = window_spans(ids.numel(), protocol.window, protocol.stride)
    try:
        model.eval()
        for begin, end, first in spans:
            x = ids[begin:end][None].to(device)
            logits = model(input_ids=x).logits[0].float()
            # position t of the window predicts token begin + t + 1
            lo = first - begin - 1
            nll = F.cross_entropy(logits[lo:-1], x[0, lo + 1 :], reduction="sum")
            total += float(nll.double())
            count += end - first
    finally:
        for m, training in modes:
            m.training = training
    nll = total / count
    return WindowPerplexity(protocol.name, math.exp(nll), nll, count, ids.numel(), len(spans))


def text_perplexity(
    model: nn.Module,
    tokenizer,
    text: str,
    protocol: str = DEFAULT_PROTOCOL,
    tail: float = 0.1,
    data_dir: PathLike | None = None,
) -> dict:
    """Perplexity on the last ``tail`` of a text as written (``tinyshakespeare``, ``wikitext2``,
    ``file:PATH``) under a named protocol; a JSON-ready dict that names everything it used."""
    proto = parse_protocol(protocol)
    part = held_out(text_as_written(text, data_dir), tail)
    ids = tokenizer(part, add_special_tokens=False, verbose=False)["input_ids"]
    res = window_perplexity(model, torch.tensor(ids), proto)
    return {
        "text": text,
        "held_out": f"last {tail:g} of the file's characters ({len(part)} characters)",
        "tokenization": "whole held-out text at once, no special tokens",
        "protocol": res.protocol,
        "perplexity": res.ppl,
        "nll": res.nll,
        "scored_tokens": res.scored_tokens,
        "total_tokens": res.total_tokens,
        "windows": res.windows,
    }


def evaluate_protocol(
    run: str | Path,
    teacher: str | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    texts: tuple[str, ...] = ("tinyshakespeare", "wikitext2"),
    data_dir: PathLike | None = None,
) -> dict:
    """Perplexity of the teacher (and of the run's student, if ``run`` is a finished run) on each
    text under ``protocol``. ``run`` is a run folder or a causal LM (name or folder) to score."""
    from attnkd.config.io import load_config
    from attnkd.models.load import freeze, load_causal_lm

    run = Path(run)
    models = {}
    if (run / "config.yaml").exists():
        models["teacher"] = teacher or load_config(run / "config.yaml").teacher.name
        if (run / "student" / "config.json").exists():
            models["student"] = str(run / "student")
    else:
        models["teacher"] = teacher or str(run)
    parse_protocol(protocol)
    tok = None
    out: dict = {"protocol": protocol, "models": dict(models), "results": {}}
    for role, name in models.items():
        loaded = load_causal_lm(name, tokenizer=tok is None)
        tok = tok or loaded.tokenizer
        model = freeze(loaded.model)
        out["results"][role] = {
            t: text_perplexity(model, tok, t, protocol, data_dir=data_dir) for t in texts
        }
    return out
