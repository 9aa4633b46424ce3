"""Known benchmark splits for ``attnkd eval --split NAME:SPLIT``: file, reader, metrics, tasks.

Each split is a file in the data folder laid out as its original distribution names it (the
STS Benchmark's ``stsb/sts-test.csv``, GLUE's ``sst2/dev.tsv``, Microsoft's
``mrpc/msr_paraphrase_test.txt``, WikiText's ``wikitext2/wiki.test.tokens``, ...), so a split
works as soon as its file is there, whether or not the shared data folder ships it. A split
says what it holds (``kind``), which metrics it gives and which run tasks can score it:

- ``sts`` pairs with gold similarity -> ``spearman`` (and ``pearson``), scored by sentence runs;
- ``text`` documents -> ``perplexity``, scored by causal_lm runs;
- ``classification`` labelled sentences or pairs -> ``accuracy`` (and ``f1``): listed so that
  they resolve and name their file, but no run task scores them yet.

Splits defined by a run itself (``stsb:val``, the causal-LM ``eval`` / ``select`` blocks) are
handled in :mod:`attnkd.evaluate`, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attnkd import paths
from attnkd.data import benchmarks as bm
from attnkd.data.benchmarks import PathLike
from attnkd.data.readers import read_text
from attnkd.errors import ConfigError, DataError
from attnkd.registry import Registry

KIND_METRICS = {
    "sts": ("spearman", "pearson"),
    "text": ("perplexity",),
    "classification": ("accuracy", "f1"),
}
KIND_TASKS = {"sts": ("sentence",), "text": ("causal_lm",), "classification": ()}
"""Run tasks that can score each kind of split."""
_ARTICLE = {"sts": "an STS", "text": "a text", "classification": "a classification"}


@dataclass(frozen=True)
class KnownSplit:
    """One split of a known benchmark: ``<data_dir>/<path>`` read by ``read(data_dir)``."""

    name: str
    """``NAME:SPLIT``, e.g. ``stsb:test``."""
    path: str
    """Relative to the data folder, as the original distribution names the file."""
    kind: str
    read: Callable[[PathLike | None], object]
    sources: tuple[str, ...] = ()
    """Training source specs that read this same file (to flag scoring on training data)."""

    @property
    def metrics(self) -> tuple[str, ...]:
        return KIND_METRICS[self.kind]

    @property
    def tasks(self) -> tuple[str, ...]:
        return KIND_TASKS[self.kind]

    def file(self, data_dir: PathLike | None = None) -> Path:
        """The split's full path; DataError naming it (exit 2) if the file is missing."""
        root = paths.data_dir(data_dir)
        path = root / self.path
        if not path.is_file():
            raise DataError(
                str(path), None,
                f"file not found for split '{self.name}'; put the original file there, or point "
                f"--data-dir / ${paths.ENV_DATA_DIR} at the folder that holds {self.path}",
            )  # fmt: skip
        return path


SPLITS: Registry[KnownSplit] = Registry("evaluation split")


def _add(name: str, path: str, kind: str, read, sources: tuple[str, ...] = ()) -> None:
    SPLITS.register(name)(KnownSplit(name, path, kind, read, sources))


def read_document(path: PathLike) -> str:
    """A text file as written: its lines joined by newlines (the usual text for perplexity)."""
    rows = read_text(path, strip=False, skip_blank=False)
    return "\n".join(r.text.rstrip("\r\n") for r in rows)


def _sts(split: str):
    return lambda data_dir: bm.read_stsb(split, data_dir)


def _text(folder: str, name: str):
    return lambda data_dir: read_document(bm.benchmark_file(folder, name, data_dir))


for _s, _f in (("train", "sts-train.csv"), ("dev", "sts-dev.csv"), ("test", "sts-test.csv")):
    _add(f"stsb:{_s}", f"stsb/{_f}", "sts", _sts(_s), (f"stsb:{_s}",) if _s != "test" else ())
for _s in ("train", "valid", "test"):
    _wiki = f"wiki.{_s}.tokens"
    _add(f"wikitext2:{_s}", f"wikitext2/{_wiki}", "text", _text("wikitext2", _wiki),
         ("wikitext2",) if _s == "valid" else ())  # fmt: skip
_add("tinyshakespeare:all", "tinyshakespeare/input.txt", "text",
     _text("tinyshakespeare", "input.txt"), ("tinyshakespeare", "tinyshakespeare:raw"))  # fmt: skip
_add("sst2:dev", "sst2/dev.tsv", "classification", lambda d: bm.read_sst2("dev", d))
_add("mrpc:dev", "mrpc/dev.tsv", "classification", lambda d: bm.read_mrpc("dev", d))
_add("mrpc:test", "mrpc/msr_paraphrase_test.txt", "classification",
     lambda d: bm.read_mrpc("test", d))  # fmt: skip
_add("rte:dev", "rte/dev.tsv", "classification", lambda d: bm.read_rte("dev", d))


def resolve_split(
    name: str, task: str, data_dir: PathLike | None = None, also: tuple[str, ...] = ()
) -> KnownSplit:
    """The known split ``name`` for a run of ``task``, its file checked to exist.

    ConfigError (at ``--split``) for an unknown name or one that ``task`` cannot score (the
    message lists what it can, ``also`` first: the run's own splits); DataError naming the full
    path when the file is missing.
    """
    if name not in SPLITS:
        known = ", ".join([*also, *SPLITS])
        raise ConfigError("--split", f"unknown split '{name}'; known: {known}")
    split = SPLITS.get(name)
    if task not in split.tasks:
        scorable = [*also, *(n for n in SPLITS if task in SPLITS.get(n).tasks)]
        who = f"{'/'.join(split.tasks)} runs" if split.tasks else "no run task yet"
        raise ConfigError(
            "--split",
            f"'{name}' is {_ARTICLE[split.kind]} split ({', '.join(split.metrics)}), scored by "
            f"{who}; "
            f"a {task} run scores: {', '.join(scorable)}",
        )
    split.file(data_dir)
    return split


def known_splits() -> list[str]:
    """``NAME:SPLIT  path  kind -> metrics`` lines, for help texts."""
    return [f"{n}: {SPLITS.get(n).path} ({SPLITS.get(n).kind})" for n in SPLITS]
