"""``attnkd repro``: metrics flattened from results.json, mean and sample std checked against an
independent computation, real tiny runs per seed, ``--resume`` skipping finished seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from int_helpers import fast_overrides

from attnkd import repro
from attnkd.cli import main
from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_flatten_keeps_numeric_metrics_and_names_stages():
    results = {
        "name": "x", "retention": 0.9, "eval_pairs": 24, "flag": True, "none": None,
        "teacher": {"name": "t", "spearman": 80.0},
        "train": {"steps": 6, "seconds_this_session": 1.0},
        "stages": [{"stage": "general", "results": {"student": {"spearman": 70.0},
                                                     "train": {"steps": 3}}}],
    }  # fmt: skip
    assert repro.flatten_metrics(results) == {
        "retention": 0.9, "eval_pairs": 24.0, "teacher.spearman": 80.0,
        "stages.general.student.spearman": 70.0,
    }  # fmt: skip


def test_summary_is_mean_and_sample_std():
    per_seed = [{"a": 1.0, "b": 5.0}, {"a": 2.0, "b": 5.0}, {"a": 4.5}]
    summary = repro.summarise(per_seed)
    assert list(summary) == ["a"]  # 'b' is missing from one run: not summarised
    a = summary["a"]
    assert a.values == [1.0, 2.0, 4.5] and a.n == 3
    assert a.mean == pytest.approx(statistics.mean([1.0, 2.0, 4.5]))
    assert a.std == pytest.approx(statistics.stdev([1.0, 2.0, 4.5]))  # n - 1
    one = repro.summarise([{"a": 3.0}])["a"]
    assert one.mean == 3.0 and one.std is None
    table = repro.markdown_table(summary)
    assert table.splitlines()[2] == f"| a | 2.5 ± {a.std:.4g} | 3 | 1, 2, 4.5 |"


def test_repro_runs_each_seed_and_aggregates(teacher_dir, data_dir, tmp_path, monkeypatch):
    over = [*fast_overrides(teacher_dir, data_dir, tmp_path / "runs"), "train.max_steps=3"]
    cfg = apply_overrides(default_recipe(), over)
    out = repro.run_repro(cfg, [0, 1], progress=False, json_path=tmp_path / "r.json")
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["seeds"] == [0, 1] and on_disk["runs"] == [
        str(tmp_path / "runs" / "tiny-seed0"), str(tmp_path / "runs" / "tiny-seed1")]  # fmt: skip
    per_run = [json.loads((Path(r) / "results.json").read_text()) for r in on_disk["runs"]]
    assert [r["name"] for r in per_run] == ["tiny-seed0", "tiny-seed1"]
    values = [r["student"]["spearman"] for r in per_run]
    assert values[0] != values[1]  # the seeds differ (batch order)
    s = on_disk["metrics"]["student.spearman"]
    assert s["values"] == values and s["n"] == 2
    assert s["mean"] == pytest.approx(statistics.mean(values))
    assert s["std"] == pytest.approx(statistics.stdev(values))
    assert "train.steps" not in on_disk["metrics"]  # bookkeeping, not a metric
    assert on_disk["wall_seconds"] > 0 and all(x is not None for x in on_disk["seconds_per_seed"])
    assert "| student.spearman |" in out["table"]

    def no_run(*args, **kwargs):
        raise AssertionError("a finished seed ran again")

    monkeypatch.setattr(repro, "run_recipe", no_run)
    again = repro.run_repro(cfg, [0, 1], resume=True, progress=False,
                            json_path=tmp_path / "r2.json")  # fmt: skip
    assert again["metrics"] == on_disk["metrics"] and again["seconds_per_seed"] == [None, None]


def test_repro_cli(teacher_dir, data_dir, tmp_path, capsys):
    over = [*fast_overrides(teacher_dir, data_dir, tmp_path / "runs"), "train.max_steps=2"]
    path = tmp_path / "out" / "repro.json"
    assert main(["repro", *over, "--seed-list", "3", "--json", str(path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| metric | mean ± std | n | values |" in printed and str(path) in printed
    data = json.loads(path.read_text())
    assert data["seeds"] == [3] and data["metrics"]["student.spearman"]["std"] is None
    assert (tmp_path / "runs" / "tiny-seed3" / "results.json").is_file()
    assert main(["repro", *over, "--seeds", "0"]) == 2
    assert "needs at least one seed" in capsys.readouterr().err


def test_seed_config_names_the_run_and_sets_the_seed():
    cfg = repro.seed_config(default_recipe(), 7)
    assert cfg.name == "minilm-sentence-seed7" and cfg.train.seed == 7
    with pytest.raises(ConfigError):
        repro.run_repro(default_recipe(), [1, 1])


def test_the_cli_summary_line_of_a_cached_teacher_set_run():
    """A sentence run taught by cached teachers has no teacher parameter count."""
    from attnkd.cli import _quality

    res = {"task": "sentence", "eval_split": "stsb:dev", "retention": 0.98,
           "teacher": {"spearman": 88.1}, "student": {"spearman": 86.5, "params": 17_241_984}}
    assert _quality(res).endswith("params 17.2M")
    res["teacher"]["params"] = 109_486_464
    assert _quality(res).endswith("params 109.5M -> 17.2M")
