"""The conversion speed page: plots and table from bench JSON, bad files refused by name."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from attnkd.errors import AttnkdError  # noqa: E402
from attnkd.report.speed import main, read_speed_json, speed_report  # noqa: E402


def _bench(path, model="M/hybrid", contexts=(512, 2048)):
    recs = []
    for i, n in enumerate(contexts):
        recs.append({"model": model, "kind": "forward", "context": n, "speedup": 0.9 + i,
                     "memory_ratio": 1.2})  # fmt: skip
        recs.append({"model": model, "kind": "decode", "context": n, "speedup": 1.0 + 2 * i,
                     "memory_ratio": 0.5 / (i + 1), "teacher_tokens_per_s": 20.0 / (i + 1),
                     "converted_tokens_per_s": 21.0})  # fmt: skip
    path.write_text(json.dumps({"meta": {"command": "python bench/x.py", "threads": 1},
                                "records": recs}))  # fmt: skip
    return path


def test_page_has_plots_table_and_commands(tmp_path):
    a = _bench(tmp_path / "a.json")
    b = _bench(tmp_path / "b.json", model="M/linear", contexts=(512,))
    html = speed_report([a, b], tmp_path / "rep")
    text = html.read_text()
    for png in ("speedup.png", "decode.png", "memory.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert png in text
    assert "M/hybrid" in text and "M/linear" in text and "python bench/x.py" in text
    assert text.count("<tr>") == 1 + 4 + 2  # header + records of both files
    assert "3.00×" in text  # the decode speed-up at 2048 (1.0 + 2 * 1), formatted


def test_records_are_read_as_written(tmp_path):
    meta, recs = read_speed_json(_bench(tmp_path / "a.json"))
    assert meta["threads"] == 1
    assert [(r.kind, r.context) for r in recs][:2] == [("forward", 512), ("decode", 512)]
    assert recs[1].converted_tokens_per_s == 21.0


def test_bad_files_are_refused_naming_them(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"records": [{"model": "m", "kind": "forward"}]}')
    with pytest.raises(AttnkdError, match=r"bad\.json: records\[0\]"):
        read_speed_json(bad)
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    assert main([str(other), "--out", str(tmp_path / "r")]) == 2
    assert "other.json" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing half-written
