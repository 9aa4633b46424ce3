"""Every bad input of ``cases.CASES`` through the CLI in-process: exit status 2, one error line
naming the offending key/file/tensor with what was expected, no traceback, and no run folder
(nothing half-written). A few run as real subprocesses too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cases import CASES, Ctx, argv_of, record

from attnkd.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _ctx(tmp_path, teacher_dir, data_dir, base_overrides, monkeypatch) -> Ctx:
    return Ctx(tmp_path, teacher_dir, data_dir, base_overrides, monkeypatch)


def _no_artifacts(runs: Path) -> None:
    left = sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) if runs.exists() else []
    assert left == [], f"left behind: {left}"


def test_the_table_has_at_least_40_distinct_cases():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_clear_line(
    case, tmp_path, teacher_dir, data_dir, base_overrides, monkeypatch, capsys
):
    ctx = _ctx(tmp_path, teacher_dir, data_dir, base_overrides, monkeypatch)
    argv = argv_of(case, ctx)
    if case.command == "distill":
        argv.append("--no-progress")
    capsys.readouterr()  # what building the input printed
    assert main(argv) == 2
    out, err = capsys.readouterr()
    record(case.id, case.group, case.what, argv[1 + (0 if case.argv_only else len(ctx.base)) :],
           err, tmp_path)  # fmt: skip
    assert err.startswith("error: "), err
    for word in case.expect(ctx):
        assert word in err, f"{word!r} not in {err!r}"
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "OK" not in out
    _no_artifacts(tmp_path / "runs")


@pytest.mark.parametrize("case_id", ["yaml-syntax", "model-no-weights", "data-not-utf8"])
def test_a_real_process_exits_2_without_a_traceback(
    case_id, tmp_path, teacher_dir, data_dir, base_overrides, monkeypatch
):
    case = next(c for c in CASES if c.id == case_id)
    ctx = _ctx(tmp_path, teacher_dir, data_dir, base_overrides, monkeypatch)
    argv = argv_of(case, ctx)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "attnkd", *argv], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in case.expect(ctx):
        assert word in proc.stderr
    _no_artifacts(tmp_path / "runs")


ARG_ERRORS = {
    "unknown-subcommand": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "ls-unknown": (["ls", "things"], "invalid choice: 'things'"),
    "unknown-flag": (["distill", "--bogus"], "unrecognized arguments: --bogus"),
}


@pytest.mark.parametrize("case_id", list(ARG_ERRORS))
def test_argument_errors_exit_2_with_usage(case_id, tmp_path, capsys):
    argv, words = ARG_ERRORS[case_id]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: attnkd" in err and words in err and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    record(case_id, "cli", f"argument error ({words.split(':')[0]})", argv, last, tmp_path)


def test_a_recipe_path_with_equals_is_read_as_a_file(
    tmp_path, teacher_dir, data_dir, base_overrides, monkeypatch, capsys
):
    ctx = _ctx(tmp_path, teacher_dir, data_dir, base_overrides, monkeypatch)
    path = ctx.recipe("lr=3e-4.yaml", "")
    assert main(["validate", str(path), "--no-data"]) == 0
    assert f"{path}: OK" in capsys.readouterr().out
    # without the file, the same word is an override (and this one names no key)
    assert main(["validate", str(tmp_path / "x=1.yaml")]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_every_case_is_in_the_docs_table():
    doc = (ROOT / "docs" / "bad-input.md").read_text(encoding="utf-8")
    runtime = ("disk-full-checkpoint", "out-of-memory", "checkpoint-corrupt", *ARG_ERRORS)
    missing = [c for c in [*(c.id for c in CASES), *runtime] if f"(`{c}`)" not in doc]
    assert missing == []
