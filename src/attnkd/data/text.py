"""Readers for raw text corpora: WikiText-2 (tokenised) and Tiny Shakespeare.

WikiText-2 (Merity et al. 2016) ``*.tokens`` files hold one paragraph per line, ``= Heading =``
lines, ``<unk>`` tokens and split number/hyphen tokens (`` @-@ ``, `` @,@ ``, `` @.@ ``).
Tiny Shakespeare (Karpathy's char-rnn) is plays' text: speaker lines ``NAME:`` followed by
speech, blocks separated by blank lines.
"""

from __future__ import annotations

import re

from attnkd.data.benchmarks import PathLike, benchmark_file
from attnkd.data.readers import read_text
from attnkd.data.rows import ReadResult, TextRow

_HEADING = re.compile(r"^(= )+.*( =)+$")
_SENTENCE_END = re.compile(r"(?<= [.!?]) +(?=\S)")
_AT_SPLIT = re.compile(r" @(.)@ ")
_SPACE_BEFORE = re.compile(r" ([.,;:!?%)\]}]|n't\b|'(?:s|re|ve|m|ll|d)\b)")
_SPACE_AFTER = re.compile(r"([(\[{$]) ")
_SPEAKER = re.compile(r"^[A-Z][A-Za-z' .,&-]*:$")


def split_tokenized_sentences(text: str) -> list[str]:
    """Split tokenised text after a stand-alone ``.``, ``!`` or ``?`` token."""
    return [part.strip() for part in _SENTENCE_END.split(text.strip()) if part.strip()]


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText tokenisation: ``a @-@ b`` -> ``a-b``, ``x , y`` -> ``x, y``, ``do n't``."""
    text = _AT_SPLIT.sub(r"\1", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    return text


def read_wikitext2(
    split: str = "valid",
    data_dir: PathLike | None = None,
    *,
    sentences: bool = True,
    detokenize: bool = False,
    bad_rows: str = "error",
) -> ReadResult[TextRow]:
    """Non-empty, non-heading lines of ``wikitext2/wiki.<split>.tokens``.

    ``sentences=True`` splits each paragraph into sentence-like chunks (same line number);
    ``detokenize=True`` applies :func:`detokenize_wikitext` to each chunk.
    """
    path = benchmark_file("wikitext2", f"wiki.{split}.tokens", data_dir)
    lines = read_text(path, strip=True, skip_blank=True, bad_rows=bad_rows)
    rows = []
    for row in lines:
        if _HEADING.match(row.text):
            continue
        chunks = split_tokenized_sentences(row.text) if sentences else [row.text]
        for chunk in chunks:
            text = detokenize_wikitext(chunk) if detokenize else chunk
            rows.append(TextRow(text, row.path, row.line))
    lines.stats.rows = len(rows)
    return ReadResult(rows, lines.stats)


def read_tinyshakespeare(
    data_dir: PathLike | None = None,
    *,
    mode: str = "paragraphs",
    speakers: bool = False,
    bad_rows: str = "error",
) -> ReadResult[TextRow]:
    """Tiny Shakespeare as ``"lines"`` (each non-blank line) or ``"paragraphs"``.

    A paragraph is a blank-line-separated block (one speech) joined with spaces, reported at
    its first line. A block's speaker line (``First Citizen:``) is dropped unless ``speakers=True``.
    """
    if mode not in ("lines", "paragraphs"):
        raise ValueError(f"mode must be 'lines' or 'paragraphs', got {mode!r}")
    path = benchmark_file("tinyshakespeare", "input.txt", data_dir)
    lines = read_text(path, strip=True, skip_blank=False, bad_rows=bad_rows)
    rows: list[TextRow] = []
    block: list[TextRow] = []

    def flush() -> None:
        if block:
            text = " ".join(r.text for r in block)
            rows.append(TextRow(text, block[0].path, block[0].line))
            block.clear()

    at_start = True
    for row in lines:
        if not row.text:
            flush()
            at_start = True
            continue
        first, at_start = at_start, False
        if first and not speakers and _SPEAKER.match(row.text):
            continue
        if mode == "lines":
            rows.append(row)
        else:
            block.append(row)
    flush()
    lines.stats.rows = len(rows)
    return ReadResult(rows, lines.stats)
