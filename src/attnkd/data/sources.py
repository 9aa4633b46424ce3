"""Named sentence sources: a spec string -> a list of unlabeled sentences.

Specs: ``stsb:train`` / ``stsb:dev`` (both sentences of each pair), ``sst2:train``,
``mrpc:train``, ``rte:train`` (and the ``:dev`` of each), ``wikitext2`` (validation split,
sentence chunks), ``tinyshakespeare`` (speeches), ``tinyshakespeare:raw`` (the file's lines as
written, for language modelling), ``seqkd:FOLDER`` (teacher-written text from ``attnkd
generate-data``, see :mod:`attnkd.lm.seqkd`), and ``file:PATH[#COLUMNS]`` (PATH relative to
the working directory): ``.txt`` (one sentence per line), ``.tsv`` / ``.csv`` (header row
required; default column ``sentence`` or ``text``, or the only one), ``.jsonl`` (default field
``text``). ``COLUMNS`` is a comma-separated list of names (or 0-based indices for tables);
every chosen field is a sentence.

New sources register with ``@SOURCES.register("name")``: a function
``(arg, data_dir, bad_rows) -> ReadResult[str]`` where ``arg`` is the text after ``name:``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from attnkd.data import benchmarks as bm
from attnkd.data.benchmarks import PathLike
from attnkd.data.readers import read_header, read_jsonl, read_table, read_text
from attnkd.data.rows import JsonRow, ReadResult
from attnkd.data.text import read_tinyshakespeare, read_wikitext2
from attnkd.errors import ConfigError, DataError
from attnkd.registry import Registry

SourceFn = Callable[[str | None, PathLike | None, str], ReadResult[str]]
SOURCES: Registry[SourceFn] = Registry("data source")
_PREFIXED = ("file", "seqkd")
"""Sources whose spec carries an argument after the colon."""
_DEFAULT_COLUMNS = ("sentence", "text")


def _pairs_source(reader: Callable[..., ReadResult], split: str) -> SourceFn:
    def load(arg: str | None, data_dir: PathLike | None, bad_rows: str) -> ReadResult[str]:
        pairs = reader(split, data_dir, bad_rows=bad_rows)
        sentences = [s for p in pairs for s in (p.sentence1, p.sentence2)]
        return ReadResult(sentences, pairs.stats)

    return load


def _sentences_source(reader: Callable[..., ReadResult], split: str) -> SourceFn:
    def load(arg: str | None, data_dir: PathLike | None, bad_rows: str) -> ReadResult[str]:
        rows = reader(split, data_dir, bad_rows=bad_rows)
        return ReadResult([r.sentence for r in rows], rows.stats)

    return load


for _split in ("train", "dev"):
    SOURCES.register(f"stsb:{_split}")(_pairs_source(bm.read_stsb, _split))
    SOURCES.register(f"mrpc:{_split}")(_pairs_source(bm.read_mrpc, _split))
    SOURCES.register(f"rte:{_split}")(_pairs_source(bm.read_rte, _split))
    SOURCES.register(f"sst2:{_split}")(_sentences_source(bm.read_sst2, _split))


@SOURCES.register("wikitext2")
def _wikitext2(arg: str | None, data_dir: PathLike | None, bad_rows: str) -> ReadResult[str]:
    rows = read_wikitext2("valid", data_dir, detokenize=True, bad_rows=bad_rows)
    return ReadResult([r.text for r in rows], rows.stats)


@SOURCES.register("tinyshakespeare")
def _shakespeare(arg: str | None, data_dir: PathLike | None, bad_rows: str) -> ReadResult[str]:
    rows = read_tinyshakespeare(data_dir, mode="paragraphs", bad_rows=bad_rows)
    return ReadResult([r.text for r in rows], rows.stats)


@SOURCES.register("tinyshakespeare:raw")
def _shakespeare_raw(arg: str | None, data_dir: PathLike | None, bad_rows: str) -> ReadResult[str]:
    """Every line of input.txt as written (speaker lines and blank lines included): joined by
    newlines it is the file itself, the usual text for language modelling."""
    rows = read_text(
        bm.benchmark_file("tinyshakespeare", "input.txt", data_dir),
        strip=False,
        skip_blank=False,
        bad_rows=bad_rows,
    )
    return ReadResult([r.text.rstrip("\r\n") for r in rows], rows.stats)


def _split_columns(arg: str) -> tuple[Path, list[str] | None]:
    path, hash_, cols = arg.rpartition("#")
    if not hash_ or "/" in cols or not cols:
        return Path(arg).expanduser(), None
    return Path(path).expanduser(), [c.strip() for c in cols.split(",")]


def _table_columns(path: Path, cols: list[str] | None, delimiter: str, quoting: str) -> list:
    names = read_header(path, delimiter=delimiter, quoting=quoting)
    if cols is not None:
        return [int(c) if c.isdigit() else c for c in cols]
    for name in _DEFAULT_COLUMNS:
        if name in names:
            return [name]
    if len(names) == 1:
        return [0]
    hint = f"add '#NAME' to the source; columns: {list(names)}"
    raise DataError(str(path), 1, f"which column holds the text? {hint}")


@SOURCES.register("file")
def _file(arg: str | None, data_dir: PathLike | None, bad_rows: str) -> ReadResult[str]:
    if not arg:
        raise ConfigError("data.train_sources", "'file:' needs a path, e.g. 'file:corpus.txt'")
    path, cols = _split_columns(arg)
    ext = path.suffix.lower()
    if ext in (".txt", ".tokens", ".raw"):
        if cols is not None:
            raise DataError(str(path), None, "a '#column' applies only to .tsv, .csv and .jsonl")
        rows = read_text(path, bad_rows=bad_rows)
        return ReadResult([r.text for r in rows], rows.stats)
    if ext in (".tsv", ".csv"):
        delimiter, quoting = ("\t", "none") if ext == ".tsv" else (",", "minimal")
        chosen = _table_columns(path, cols, delimiter, quoting)
        table = read_table(path, chosen, delimiter=delimiter, quoting=quoting, bad_rows=bad_rows)
        sentences = [v.strip() for row in table for v in row.values]
        return ReadResult(sentences, table.stats)
    if ext == ".jsonl":
        fields = cols or ["text"]

        def texts(rec: JsonRow) -> list[str]:
            bad = [n for n in fields if not isinstance(rec[n], str)]
            if bad:
                raise ValueError(f"field {bad[0]!r} must be a string, found {rec[bad[0]]!r}")
            return [rec[n].strip() for n in fields]

        per_row = read_jsonl(path, fields, bad_rows=bad_rows, convert=texts)
        return ReadResult([t for ts in per_row for t in ts], per_row.stats)
    raise DataError(str(path), None, f"unknown file type {ext!r}; use .txt, .tsv, .csv or .jsonl")


@SOURCES.register("seqkd")
def _seqkd(arg: str | None, data_dir: PathLike | None, bad_rows: str) -> ReadResult[str]:
    """Teacher-written text (``attnkd generate-data``): ``seqkd:FOLDER``, checksum checked."""
    from attnkd.data.seqkd import read_seqkd

    return read_seqkd(arg)


def known_sources() -> list[str]:
    """Names accepted by :func:`load_source` (``file`` takes ``file:PATH[#COLUMNS]``)."""
    args = {"file": "PATH[#COLUMNS]", "seqkd": "FOLDER"}
    return [f"{n}:{args[n]}" if n in _PREFIXED else n for n in SOURCES.names()]


def load_source(
    spec: str, data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> ReadResult[str]:
    """Sentences of one source spec, with the read stats (skipped malformed rows)."""
    name, _, arg = spec.partition(":")
    if name in _PREFIXED:
        key, argument = name, arg
    else:
        key, argument = spec, None
    if key not in SOURCES:
        known = ", ".join(known_sources())
        raise ConfigError("data.train_sources", f"unknown source {spec!r}; known: {known}")
    return SOURCES.get(key)(argument, data_dir, bad_rows)


def held_out_sentences(
    spec: str, data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> ReadResult[str]:
    """Sentences of one ``data.exclude_files`` item: a source spec (``file:PATH[#COLUMNS]``, or a
    named source such as ``rte:dev``) or a plain ``PATH[#COLUMNS]``, read as ``file:PATH``."""
    if spec.partition(":")[0] not in _PREFIXED and spec not in SOURCES:
        spec = f"file:{spec}"
    return load_source(spec, data_dir, bad_rows=bad_rows)


PAIR_SOURCES = tuple(f"{n}:{s}" for n in ("stsb", "mrpc", "rte") for s in ("train", "dev"))
"""Sources whose sentences come in pairs (:func:`source_pairs`)."""


def source_pairs(
    spec: str, data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> list[tuple[str, str]]:
    """The sentence pairs of a pair source (``stsb:train``, ``mrpc:train``, ``rte:train``, their
    ``:dev``), each pair's sentences stripped, in file order; ``[]`` for a source of single
    sentences. Labels and scores are not read: only which sentences belong together."""
    if spec not in PAIR_SOURCES:
        return []
    texts = list(load_source(spec, data_dir, bad_rows=bad_rows))
    return [(texts[i].strip(), texts[i + 1].strip()) for i in range(0, len(texts), 2)]


def source_pair_scores(
    spec: str, data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> list[float] | None:
    """The gold similarity of each pair of :func:`source_pairs`, in the same order: the STS-B
    score scaled to [0, 1] (``score / 5``) for ``stsb:*``; ``None`` (nothing read) for every
    other source, which has no graded score (MRPC, RTE) or no pairs."""
    name, _, split = spec.partition(":")
    if spec not in PAIR_SOURCES or name != "stsb":
        return None
    return [p.score / 5.0 for p in bm.read_stsb(split, data_dir, bad_rows=bad_rows)]


def source_sentences(
    spec: str, data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> list[str]:
    """Sentences of one source spec as a plain list."""
    return list(load_source(spec, data_dir, bad_rows=bad_rows))
