"""Readers for the GLUE / STS benchmark files in the data directory (see its README).

Layouts handled here: STS-B ``sts-*.csv`` are tab-separated with no header, unescaped quotes
and 7 or 9 fields (genre, filename, year, id, score, sentence1, sentence2 [, source1,
source2]); SST-2, MRPC and RTE are GLUE TSVs with a header (MRPC's starts with a UTF-8 BOM).
Sentences are returned with surrounding whitespace stripped (SST-2 keeps a space before the
tab; some STS-B sentences end in one).

Papers: Cer et al. 2017 (STS-B); Wang et al. 2019 (GLUE).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attnkd import paths
from attnkd.data.readers import read_table
from attnkd.data.rows import ReadResult, TableRow, parse_float, parse_label
from attnkd.errors import DataError

BINARY_LABELS = {"0": 0, "1": 1}
RTE_LABELS = {"entailment": 0, "not_entailment": 1}
"""GLUE's label ids for RTE (as in the GLUE release and Hugging Face ``glue/rte``)."""

PathLike = str | os.PathLike

_STSB_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
_GLUE_FILES = {"train": "train.tsv", "dev": "dev.tsv"}
_MRPC_FILES = {**_GLUE_FILES, "test": "msr_paraphrase_test.txt"}
"""MRPC test pairs are labelled in Microsoft's release (same columns as GLUE's train.tsv)."""


@dataclass(frozen=True)
class SentencePair:
    """Two sentences and a gold similarity score (STS-B: 0 to 5)."""

    sentence1: str
    sentence2: str
    score: float
    path: str = field(default="", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class LabeledSentence:
    """One sentence and its class id (SST-2: 0 negative, 1 positive)."""

    sentence: str
    label: int
    path: str = field(default="", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class LabeledPair:
    """Two sentences and a class id (MRPC: 1 paraphrase; RTE: 0 entailment)."""

    sentence1: str
    sentence2: str
    label: int
    path: str = field(default="", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)


def benchmark_file(folder: str, name: str, data_dir: PathLike | None = None) -> Path:
    """Path of ``<data_dir>/<folder>/<name>``; DataError with a hint if it is missing."""
    root = paths.data_dir(data_dir)
    path = root / folder / name
    if not path.is_file():
        raise DataError(
            str(path),
            None,
            f"file not found; point data.data_dir or ${paths.ENV_DATA_DIR} at the folder "
            f"that holds {folder}/ (now {root})",
        )
    return path


def _split_name(split: str, files: dict[str, str], dataset: str) -> str:
    if split not in files:
        raise ValueError(f"unknown {dataset} split {split!r}; expected one of {sorted(files)}")
    return files[split]


def _sentence(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError(f"empty {what}")
    return text


def _stsb_pair(row: TableRow) -> SentencePair:
    score = parse_float(row[4], "the score (field 5)")
    if not 0.0 <= score <= 5.0:
        raise ValueError(f"expected a score in [0, 5] (field 5), found {row[4]!r}")
    return SentencePair(
        _sentence(row[5], "sentence1 (field 6)"),
        _sentence(row[6], "sentence2 (field 7)"),
        score,
        row.path,
        row.line,
    )


def read_stsb(
    split: str = "train", data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> ReadResult[SentencePair]:
    """STS Benchmark pairs with float scores from ``stsb/sts-{train,dev,test}.csv``."""
    path = benchmark_file("stsb", _split_name(split, _STSB_FILES, "STS-B"), data_dir)
    return read_table(
        path, header=False, widths=(7, 9), quoting="none", bad_rows=bad_rows, convert=_stsb_pair
    )


def read_sst2(
    split: str = "train", data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> ReadResult[LabeledSentence]:
    """GLUE SST-2 sentences with labels 0/1 from ``sst2/{train,dev}.tsv``."""
    path = benchmark_file("sst2", _split_name(split, _GLUE_FILES, "SST-2"), data_dir)

    def convert(row: TableRow) -> LabeledSentence:
        label = parse_label(row[1], BINARY_LABELS, "label")
        return LabeledSentence(_sentence(row[0], "sentence"), label, row.path, row.line)

    return read_table(path, ["sentence", "label"], bad_rows=bad_rows, convert=convert)


def read_mrpc(
    split: str = "train", data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> ReadResult[LabeledPair]:
    """MRPC pairs with labels (1 paraphrase, 0 not) from GLUE's ``mrpc/{train,dev}.tsv`` or,
    for ``test``, Microsoft's ``mrpc/msr_paraphrase_test.txt``."""
    path = benchmark_file("mrpc", _split_name(split, _MRPC_FILES, "MRPC"), data_dir)
    convert = _pair_converter(BINARY_LABELS, "Quality")
    columns = ["Quality", "#1 String", "#2 String"]
    return read_table(path, columns, bad_rows=bad_rows, convert=convert)


def read_rte(
    split: str = "train", data_dir: PathLike | None = None, *, bad_rows: str = "error"
) -> ReadResult[LabeledPair]:
    """GLUE RTE pairs; labels mapped by :data:`RTE_LABELS` from ``rte/{train,dev}.tsv``."""
    path = benchmark_file("rte", _split_name(split, _GLUE_FILES, "RTE"), data_dir)
    convert = _pair_converter(RTE_LABELS, "label")
    columns = ["label", "sentence1", "sentence2"]
    return read_table(path, columns, bad_rows=bad_rows, convert=convert)


def _pair_converter(labels: dict[str, int], what: str) -> Callable[[TableRow], LabeledPair]:
    def convert(row: TableRow) -> LabeledPair:
        label = parse_label(row[0], labels, what)
        s1 = _sentence(row[1], "first sentence")
        return LabeledPair(s1, _sentence(row[2], "second sentence"), label, row.path, row.line)

    return convert
