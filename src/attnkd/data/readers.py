"""Generic readers for plain text, TSV/CSV and JSONL files.

Every row keeps the file and line it came from, so any later check can name them. A malformed
row (wrong column count, invalid JSON, missing field, undecodable bytes, or a value a caller's
conversion rejects) raises :class:`~attnkd.errors.DataError` naming file and line, or, with
``bad_rows="skip"``, is skipped and counted in :class:`ReadStats`.

Files are read as bytes and decoded line by line, so the encoding must be ASCII-compatible
(UTF-8, Latin-1). A UTF-8 byte-order mark at the start of the file is dropped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from attnkd.data.rows import (
    JsonRow,
    ReadResult,
    ReadStats,
    RowPolicy,
    TableRow,
    TextRow,
    check_bad_rows,
    map_rows,
    parse_float,
    parse_label,
)
from attnkd.errors import DataError

T = TypeVar("T")

__all__ = [
    "JsonRow",
    "ReadResult",
    "ReadStats",
    "TableRow",
    "TextRow",
    "check_bad_rows",
    "map_rows",
    "parse_float",
    "parse_label",
    "read_header",
    "read_jsonl",
    "read_table",
    "read_text",
]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(str(path), None, "file not found")
    if not path.is_file():
        raise DataError(str(path), None, "expected a file, found a directory or special file")


def _lines(policy: RowPolicy, encoding: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line with its newline removed)."""
    _check_file(policy.path)
    try:
        with policy.path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as err:
                    byte = raw[err.start : err.start + 1]
                    where = f"byte {byte!r} at column {err.start + 1}"
                    policy.bad(number, f"not valid {encoding}: {where}")
                    continue
                if number == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield number, text.rstrip("\r\n")
    except OSError as err:
        raise DataError(str(policy.path), None, f"cannot read: {err.strerror or err}") from err


def read_text(
    path: str | Path,
    *,
    strip: bool = True,
    skip_blank: bool = True,
    encoding: str = "utf-8",
    bad_rows: str = "error",
) -> ReadResult[TextRow]:
    """Read one example per line; blank lines are skipped unless ``skip_blank=False``."""
    policy = RowPolicy(Path(path), bad_rows)
    rows = []
    for number, text in _lines(policy, encoding):
        if strip:
            text = text.strip()
        if skip_blank and not text.strip():
            continue
        rows.append(TextRow(text, str(policy.path), number))
    return policy.result(rows)


def _records(
    policy: RowPolicy, delimiter: str, quoting: str, encoding: str
) -> Iterator[tuple[int, list[str]]]:
    """Yield (first line, fields) per non-blank record."""
    if quoting == "none":
        for number, text in _lines(policy, encoding):
            if text.strip():
                yield number, text.split(delimiter)
        return
    if quoting != "minimal":
        raise ValueError(f"quoting must be 'none' or 'minimal', got {quoting!r}")
    consumed: list[int] = []

    def feed() -> Iterator[str]:
        for number, text in _lines(policy, encoding):
            consumed.append(number)
            yield text + "\n"

    reader = csv.reader(feed(), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, strict=True)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            line = consumed[0] if consumed else None
            consumed.clear()
            policy.bad(line, f"cannot parse CSV quoting: {err}")
            continue
        start = consumed[0] if consumed else 0
        consumed.clear()
        if fields and any(f.strip() for f in fields):
            yield start, fields


def read_header(
    path: str | Path, *, delimiter: str = "\t", quoting: str = "none", encoding: str = "utf-8"
) -> tuple[str, ...]:
    """Return the column names of a delimited file's first record."""
    policy = RowPolicy(Path(path), "error")
    for _, fields in _records(policy, delimiter, quoting, encoding):
        return tuple(f.strip() for f in fields)
    raise DataError(str(path), None, "empty file; expected a header row")


def _column_index(col: int | str, names: tuple[str, ...] | None, path: Path, line: int) -> int:
    if isinstance(col, int):
        return col
    if names is None:
        raise DataError(str(path), None, f"column {col!r} is a name but the file has no header")
    if col not in names:
        raise DataError(str(path), line, f"no column {col!r} in header; columns: {list(names)}")
    return names.index(col)


def read_table(
    path: str | Path,
    columns: Sequence[int | str] | None = None,
    *,
    delimiter: str = "\t",
    header: bool = True,
    quoting: str = "none",
    widths: Iterable[int] | None = None,
    encoding: str = "utf-8",
    bad_rows: str = "error",
    convert: Callable[[TableRow], T] | None = None,
) -> ReadResult[TableRow] | ReadResult[T]:
    """Read a delimited file and keep ``columns`` (names need ``header=True``; ints are 0-based).

    ``quoting="none"`` splits on the delimiter and keeps quote characters (GLUE/STS TSVs);
    ``"minimal"`` is standard CSV quoting. Each record must have a field count in ``widths``
    (default: the header's width, or the first record's without a header). Blank lines are
    skipped. Returned rows hold only the chosen columns, in the order asked, or are what
    ``convert(row)`` returns (a ``ValueError`` from it makes the row malformed).
    """
    policy = RowPolicy(Path(path), bad_rows)
    records = _records(policy, delimiter, quoting, encoding)
    names: tuple[str, ...] | None = None
    header_line = 0
    allowed = set(widths) if widths is not None else None
    if header:
        first = next(records, None)
        if first is None:
            raise DataError(str(path), None, "empty file; expected a header row")
        header_line, names = first[0], tuple(f.strip() for f in first[1])
        if allowed is None:
            allowed = {len(names)}
    chosen = (
        None
        if columns is None
        else [_column_index(c, names, policy.path, header_line) for c in columns]
    )
    out_names = names if chosen is None or names is None else tuple(names[i] for i in chosen)
    sep = "tab" if delimiter == "\t" else repr(delimiter)
    rows = []
    for number, fields in records:
        if allowed is None:
            allowed = {len(fields)}
        if len(fields) not in allowed:
            want = " or ".join(str(w) for w in sorted(allowed))
            policy.bad(number, f"expected {want} {sep}-separated fields, found {len(fields)}")
            continue
        if chosen is None:
            values = tuple(fields)
        elif max(chosen) >= len(fields) or min(chosen) < -len(fields):
            policy.bad(number, f"no column {max(chosen)} in a row of {len(fields)} fields")
            continue
        else:
            values = tuple(fields[i] for i in chosen)
        policy.keep(rows, TableRow(values, out_names, str(policy.path), number), convert)
    return policy.result(rows)


def read_jsonl(
    path: str | Path,
    fields: Sequence[str] | None = None,
    *,
    encoding: str = "utf-8",
    bad_rows: str = "error",
    convert: Callable[[JsonRow], T] | None = None,
) -> ReadResult[JsonRow] | ReadResult[T]:
    """Read one JSON object per line, keeping ``fields`` (each required); blank lines skipped.

    ``convert`` maps each row as in :func:`read_table`.
    """
    policy = RowPolicy(Path(path), bad_rows)
    rows = []
    for number, text in _lines(policy, encoding):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            policy.bad(number, f"invalid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(obj, dict):
            policy.bad(number, f"expected a JSON object, found {type(obj).__name__}")
            continue
        if fields is not None:
            missing = [f for f in fields if f not in obj]
            if missing:
                policy.bad(number, f"missing field {missing[0]!r}; fields present: {sorted(obj)}")
                continue
            obj = {f: obj[f] for f in fields}
        policy.keep(rows, JsonRow(obj, str(policy.path), number), convert)
    return policy.result(rows)
