"""scripts/teachers_fmnist.py over seeds: the recipe's own seed keeps its run, other seeds get
their own run names and seeds, and the summary is the mean and sample std of the final students
(the last generation of a self-distillation chain, the mean of the data partitions' students)."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

from attnkd.config.io import apply_overrides, load_config

_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "teachers_fmnist_script", _ROOT / "scripts" / "teachers_fmnist.py"
)
tf = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tf
_spec.loader.exec_module(tf)


def test_seed_overrides_keep_the_recipe_seed_and_name_the_others():
    recipe = str(_ROOT / "recipes" / "fmnist-multiexit.yaml")
    given = ["name=fmnist-multiexit-w02"]
    cfg = apply_overrides(load_config(recipe), given)
    assert tf.seed_overrides(cfg, given, cfg.train.seed) == given
    other = tf.seed_overrides(cfg, given, cfg.train.seed + 1)
    seeded = apply_overrides(load_config(recipe), other)
    assert seeded.name == f"fmnist-multiexit-w02-s{cfg.train.seed + 1}"
    assert seeded.train.seed == cfg.train.seed + 1
    assert seeded.losses == cfg.losses  # only the name and the seed change


def test_seed_summary_reads_the_last_generation_and_skips_unfinished():
    rows = [
        {"generations": [{"student_accuracy": 0.5}, {"student_accuracy": 0.9}]},
        {"student_accuracy": 0.8},
        {"not_finished": True},
        {"student_accuracy": 0.7},
        {"partitions": [{"student_accuracy": 0.6}, {"student_accuracy": 0.8}]},
    ]
    out = tf.seed_summary(rows)
    assert out["student_accuracy_values"] == pytest.approx([0.9, 0.8, 0.7, 0.7])
    assert out["n"] == 4
    assert out["student_accuracy_mean"] == pytest.approx(0.775)
    assert out["student_accuracy_std"] == pytest.approx(statistics.stdev([0.9, 0.8, 0.7, 0.7]))
    one = tf.seed_summary([{"student_accuracy": 0.6}])
    assert one["student_accuracy_std"] is None and one["student_accuracy_mean"] == 0.6
