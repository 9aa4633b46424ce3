"""scripts/cls_repro.py tables: one row per recipe over its seeds, retention against the teacher
run, the commands and wall times recorded beside each run, runs without results left out."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "cls_repro.py"
_spec = importlib.util.spec_from_file_location("cls_repro_script", _PATH)
cr = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cr
_spec.loader.exec_module(cr)


def _run(root: Path, name: str, acc: float, layers: int, wall: float | None, **extra) -> None:
    d = root / name
    d.mkdir(parents=True)
    res = {
        "name": name,
        "seed": 0,
        "eval_split": "sst2:heldout",
        "select_split": "sst2:val",
        "student": {"accuracy": acc, "f1": acc - 0.01, "layers": layers, "params": 10 * layers},
        "train": {"steps": 7, "teacher_used": layers < 6, "train_examples": 100,
                  "held_out_removed": {"sst2:heldout": 3}},
        **extra,
    }  # fmt: skip
    (d / "results.json").write_text(json.dumps(res))
    if wall is not None:
        (d / "wall.json").write_text(json.dumps({"wall_s": wall, "command": f"attnkd {name}"}))


def test_tables_rows_retention_and_commands(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "sst2-teacher", 0.90, 6, 100.0)
    _run(runs, "sst2-l3-s0", 0.88, 3, 10.0)
    _run(runs, "sst2-l3-s1", 0.86, 3, 14.0)
    _run(runs, "sst2-l3-scratch-s0", 0.80, 3, None)  # no wall.json: wall time is NaN
    (runs / "sst2-l3-s2").mkdir()  # unfinished: no results.json, left out
    out = tmp_path / "results" / "t.json"
    assert cr.cmd_tables("sst2", out, runs_dir=runs, note="quiet") == 0
    table = json.loads(out.read_text())
    assert table["note"].endswith("; quiet")
    rows = {r["recipe"]: r for r in table["rows"]}
    assert list(rows) == ["sst2-teacher", "sst2-l3", "sst2-l3-scratch"]
    l3 = rows["sst2-l3"]
    assert l3["seeds"] == [0, 1] and l3["accuracy"]["values"] == [0.88, 0.86]
    assert l3["accuracy"]["std"] == pytest.approx(statistics.stdev([0.88, 0.86]))
    assert l3["retention"]["mean"] == pytest.approx((0.88 + 0.86) / 2 / 0.90)
    assert l3["wall_s"]["mean"] == pytest.approx(12.0)
    assert l3["commands"] == ["attnkd sst2-l3-s0", "attnkd sst2-l3-s1"]
    assert rows["sst2-l3-scratch"]["commands"] == [None]
    assert rows["sst2-teacher"]["retention"]["mean"] == 1.0
    assert "sst2-l3 " in capsys.readouterr().out
    assert not list(out.parent.glob("*.tmp"))  # written atomically, no leftover


def test_run_names_keep_the_teaching_seed_under_the_teacher_name():
    assert cr.run_name("sst2-teacher", 0) == "sst2-teacher"  # the run students read
    assert cr.run_name("sst2-teacher", 2) == "sst2-teacher-s2"  # table row only
    assert cr.run_name("sst2-l3-kd", 2) == "sst2-l3-kd-s2"


def test_teacher_seeds_form_the_teacher_row_and_retention_stays_against_seed_0(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "sst2-teacher", 0.90, 6, 100.0)
    _run(runs, "sst2-teacher-s1", 0.86, 6, 120.0, seed=1)
    _run(runs, "sst2-teacher-s2", 0.88, 6, 110.0, seed=2)
    _run(runs, "sst2-l3-s0", 0.81, 3, 10.0)
    out = tmp_path / "t.json"
    assert cr.cmd_tables("sst2", out, runs_dir=runs) == 0
    rows = {r["recipe"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["sst2-teacher", "sst2-l3"]  # teacher seeds are no student row
    t = rows["sst2-teacher"]
    assert t["seeds"] == [0, 1, 2] and t["accuracy"]["values"] == [0.90, 0.86, 0.88]
    assert t["accuracy"]["std"] == pytest.approx(statistics.stdev([0.90, 0.86, 0.88]))
    assert t["wall_s"]["mean"] == pytest.approx(110.0) and "seed 0" in t["teaches"]
    assert rows["sst2-l3"]["retention"]["mean"] == pytest.approx(0.81 / 0.90)


def test_curves_record_selection_scores_per_step(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "scr-a", 0.81, 2, 5.0)
    res = json.loads((runs / "scr-a" / "results.json").read_text())
    res["student"].update(best_step=4, select_accuracy=0.83)
    (runs / "scr-a" / "results.json").write_text(json.dumps(res))
    events = [
        {"event": "train", "step": 2},
        {"event": "eval", "step": 2, "metrics": {"accuracy": 0.7}},
        {"event": "eval", "step": 4, "metrics": {"accuracy": 0.83}},
    ]
    (runs / "scr-a" / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    out = tmp_path / "screen.json"
    assert cr.cmd_curves(["scr-a"], out, runs_dir=runs, note="n") == 0
    rec = json.loads(out.read_text())["runs"]["scr-a"]
    assert rec["select_accuracy_by_step"] == {"2": 0.7, "4": 0.83}
    assert rec["best_step"] == 4 and rec["eval_accuracy_not_used_to_choose"] == 0.81
    assert rec["command"] == "attnkd scr-a"
    assert cr.cmd_curves(["missing"], None, runs_dir=runs) == 2
    assert "missing" in capsys.readouterr().err


def test_curves_read_spearman_of_sentence_runs_and_mark_a_seen_eval_split(tmp_path, capsys):
    runs = tmp_path / "runs"
    d = runs / "scr-s"
    d.mkdir(parents=True)
    student = {"spearman": 87.2, "best_step": 8, "select_spearman": 80.6}
    res = {"select_split": "stsb:val", "eval_split": "stsb:dev", "student": student}
    (d / "results.json").write_text(json.dumps(res))
    events = [{"event": "eval", "step": s, "metrics": {"spearman": v}} for s, v in
              ((0, 78.2), (8, 80.6))]  # fmt: skip
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    out = tmp_path / "c.json"
    assert cr.cmd_curves(["scr-s"], out, runs_dir=runs, eval_seen=True) == 0
    rec = json.loads(out.read_text())["runs"]["scr-s"]
    assert rec["select_spearman_by_step"] == {"0": 78.2, "8": 80.6}
    assert rec["eval_spearman_seen_before_choosing"] == 87.2 and rec["select_spearman"] == 80.6
    assert "best 80.60 at step 8" in capsys.readouterr().out
