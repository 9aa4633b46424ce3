"""Evaluation hygiene through the CLI: refused split choices and unreadable held-out files stop
``validate`` and ``distill`` with exit 2 before any run folder is written; a finished run
reports what was held out of its corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnkd.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("command", ["validate", "distill"])
def test_select_task_equal_to_eval_task_is_refused(base_overrides, tmp_path, capsys, command):
    argv = [command, *base_overrides, "data.eval_task=stsb:dev", "data.select_task=stsb:dev"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "config error at 'data.select_task'" in err and "also data.eval_task" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["validate", "distill"])
def test_missing_exclude_file_is_named(base_overrides, tmp_path, capsys, command):
    missing = tmp_path / "public" / "test.tsv"
    assert main([command, *base_overrides, f"data.exclude_files=[{missing}]"]) == 2
    err = capsys.readouterr().err
    assert "config error at 'data.exclude_files[0]'" in err and str(missing) in err
    assert not (tmp_path / "runs").exists()


def test_run_reports_held_out_counts_and_never_trains_on_them(base_overrides, data_dir, tmp_path):
    public = tmp_path / "public.txt"
    sst2 = (data_dir / "sst2" / "train.tsv").read_text().splitlines()[1:4]
    public.write_text("\n".join(line.split("\t")[0].upper() for line in sst2) + "\n")
    argv = ["distill", *base_overrides, f"data.exclude_files=[{public}]", "--no-progress"]
    assert main(argv) == 0
    results = json.loads(Path(tmp_path / "runs" / "tiny" / "results.json").read_text())
    held = results["train"]["held_out"]
    assert set(held) == {"stsb:dev", "stsb:val", str(public)}
    assert held[str(public)]["found"] == held[str(public)]["split_sentences"] >= 1
    assert held[str(public)]["removed"] >= 1
    assert results["train"]["held_out_removed"] >= held[str(public)]["removed"]
    assert results["select_pairs"] >= 1
