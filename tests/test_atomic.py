"""The one atomic-write helper: a failure mid-write (disk full) leaves the old artifact and no
temporary files, for single files, whole directories and every writer that uses them."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import attnkd.atomic as atomic
from attnkd.atomic import atomic_dir, atomic_file, write_bytes, write_json, write_text


def _enospc_after(monkeypatch, n_bytes: int):
    """Make ``os.write`` in attnkd.atomic write ``n_bytes`` then fail as a full disk would."""
    real = os.write
    written = [0]

    def write(fd, data):
        room = n_bytes - written[0]
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data[:room]))
        written[0] += n
        return n

    monkeypatch.setattr(atomic.os, "write", write)


def test_write_round_trip_and_mode(tmp_path):
    p = write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads(p.read_text()) == {"x": [1, 2]}
    write_text(tmp_path / "b.txt", "héllo")
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    write_bytes(tmp_path / "sub" / "c.bin", b"\x00\x01")  # parent folders are created
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"\x00\x01"
    if os.name == "posix":
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_disk_full_mid_write_keeps_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json(target, {"old": True})
    before = target.read_bytes()
    _enospc_after(monkeypatch, 5)  # a few bytes land in the temporary, then ENOSPC
    with pytest.raises(OSError) as e:
        write_json(target, {"new": "x" * 1000})
    assert e.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with pytest.raises(OSError):  # a file that did not exist yet is not created half-written
        write_text(tmp_path / "new.txt", "y" * 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_fsync_failure_and_unserialisable_leave_nothing(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    write_json(target, [1])
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO)))
    with pytest.raises(OSError):
        write_json(target, [2])
    assert json.loads(target.read_text()) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_file_for_path_writers(tmp_path):
    from safetensors.torch import load_file, save_file

    target = tmp_path / "w.safetensors"
    with atomic_file(target) as tmp:
        save_file({"a": torch.ones(2)}, str(tmp))
    assert torch.equal(load_file(str(target))["a"], torch.ones(2))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        full()
    assert torch.equal(load_file(str(target))["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_atomic_dir_disk_full_keeps_previous_directory(tmp_path):
    target = tmp_path / "student"
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "x").write_text("1")
    with pytest.raises(OSError) as e, atomic_dir(target) as tmp:
        (tmp / "config.json").write_text('{"new": 1}')
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC
    assert (target / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["student"]
    with atomic_dir(target) as tmp:  # a clean replace leaves no .old copy
        (tmp / "config.json").write_text("[]")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_keep_existing_discards_the_late_copy(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target, keep_existing=True) as tmp:
        (tmp / "a").write_text("first")
        # another process finishes the same entry meanwhile
        target.mkdir()
        (target / "a").write_text("theirs")
    assert (target / "a").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_every_json_and_yaml_writer_is_atomic_on_disk_full(tmp_path, monkeypatch):
    """dump_yaml, the eval writer and the runner's results writer share the helper."""
    from attnkd import evaluate as eval_run
    from attnkd.config.io import dump_yaml
    from attnkd.config.schema import DistillConfig
    from attnkd.distill import _write_json

    dump_yaml(DistillConfig(), tmp_path / "config.yaml")
    _write_json(tmp_path / "results.json", {"a": 1})
    eval_run._write(tmp_path / "eval.json", {"b": 2})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _enospc_after(monkeypatch, 3)
    for write in (
        lambda: dump_yaml(DistillConfig(name="other"), tmp_path / "config.yaml"),
        lambda: _write_json(tmp_path / "results.json", {"a": 2}),
        lambda: eval_run._write(tmp_path / "eval.json", {"b": 3}),
    ):
        with pytest.raises(OSError):
            write()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_atomic_files_replace_each_file_and_keep_the_others(tmp_path):
    from attnkd.atomic import atomic_files

    (tmp_path / "mine.txt").write_text("user file")
    (tmp_path / "config.json").write_text("old")
    with pytest.raises(OSError), atomic_files(tmp_path) as tmp:
        (tmp / "config.json").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / "config.json").read_text() == "old"
    with atomic_files(tmp_path) as tmp:
        (tmp / "config.json").write_text("new")
        (tmp / "model.safetensors").write_bytes(b"w")
    assert (tmp_path / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "mine.txt",
        "model.safetensors",
    ]
