"""Teacher-written text (``attnkd generate-data``, :mod:`attnkd.lm.seqkd`) read back as the
``seqkd:FOLDER`` data source: each sample's text, after checking the folder's manifest and the
sha256 of its ``samples.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from attnkd.atomic import sha256
from attnkd.data.rows import ReadResult, ReadStats
from attnkd.errors import ConfigError, DataError

__all__ = ["FORMAT", "SAMPLES", "read_seqkd"]

FORMAT = "attnkd-seqkd/1"
SAMPLES = "samples.jsonl"


def read_seqkd(arg: str | None) -> ReadResult[str]:
    """The texts of a ``seqkd:PATH`` folder, after checking its manifest and checksum."""
    if not arg:
        raise ConfigError("data.train_sources", "'seqkd:' needs a folder, e.g. 'seqkd:runs/x'")
    folder = Path(arg).expanduser()
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise DataError(str(folder), None, "no manifest.json: not an 'attnkd generate-data' "
                        "folder")  # fmt: skip
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(str(mpath), None, f"unreadable manifest ({err})") from err
    if m.get("format") != FORMAT:
        raise DataError(str(mpath), None, f"format {m.get('format')!r}, expected {FORMAT!r}")
    path = folder / SAMPLES
    want = m.get("files", {}).get(SAMPLES, {}).get("sha256")
    if not path.is_file() or sha256(path) != want:
        raise DataError(str(path), None, "missing, or its sha256 differs from manifest.json "
                        "(edited or corrupt); generate it again")  # fmt: skip
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
    return ReadResult(texts, ReadStats(path=str(path), rows=len(texts)))
