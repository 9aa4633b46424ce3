"""Staged-run configs: stage overrides merge over the recipe key by key, carry, chains, errors
naming the stage (and file:line), and validation of every stage. No model is trained here."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnkd.config.io import apply_overrides, dump_yaml, load_config
from attnkd.config.schema import default_recipe
from attnkd.config.stages import stage_plan
from attnkd.errors import ConfigError
from attnkd.students.build import even_layers, select_layers

TWO_STAGES = """\
name: two
output_dir: {out}
student: {{layers: [0, 2, 5]}}
train: {{lr: 1.0e-4, max_steps: 100}}
stages:
  - name: general
    data: {{train_sources: [wikitext2]}}
    train: {{max_steps: 10}}
  - name: task
    teacher: {{name: other-teacher}}
    losses: [{{name: sentence_mse}}]
    student: {{freeze: [embeddings]}}
"""


@pytest.fixture
def two(tmp_path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(TWO_STAGES.format(out=tmp_path / "runs"))
    return path


def test_stage_sections_merge_over_the_top_level_key_by_key(two, tmp_path):
    plan = stage_plan(load_config(two))
    general, task = (st.cfg for st in plan)
    assert [st.folder for st in plan] == ["01-general", "02-task"]
    assert general.data.train_sources == ["wikitext2"] and general.train.max_steps == 10
    assert general.train.lr == 1e-4  # not given by the stage: the top level's
    assert general.teacher.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert [t.name for t in general.losses] == ["relation"]  # the default recipe's losses
    assert task.data.train_sources == default_recipe().data.train_sources
    assert task.train.max_steps == 100 and task.teacher.name == "other-teacher"
    assert [t.name for t in task.losses] == ["sentence_mse"] and task.student.freeze == [
        "embeddings"
    ]
    assert general.output_dir == task.output_dir == str(tmp_path / "runs" / "two" / "stages")
    assert not general.stages and not task.stages  # a stage is a plain one-stage run


def test_the_student_carries_over_as_the_previous_stage_export(two, tmp_path):
    general, task = stage_plan(load_config(two))
    assert general.cfg.student.init == "teacher" and general.cfg.student.layers == [0, 2, 5]
    assert task.cfg.student.init == str(general.run_dir / "student")


def test_top_level_overrides_reach_stages_that_do_not_set_the_key(two):
    cfg = load_config(two, ["train.lr=3e-4", "train.max_steps=7", "stages.1.train.seed=5"])
    general, task = (st.cfg for st in stage_plan(cfg))
    assert general.train.lr == task.train.lr == 3e-4
    assert general.train.max_steps == 10 and task.train.max_steps == 7  # the stage's own wins
    assert task.train.seed == 5 and general.train.seed == 0


def test_config_round_trips_with_its_stages(two, tmp_path):
    cfg = load_config(two)
    dump_yaml(cfg, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == cfg


def test_a_bad_stage_key_is_named_with_its_stage_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nstages:\n  - name: a\n  - name: b\n    train: {lrr: 1}\n")
    with pytest.raises(
        ConfigError, match=r"stages\[1\]\.train\.lrr.*bad.yaml:5.*did you mean 'lr'"
    ):
        load_config(path)
    path.write_text("name: bad\nstages:\n  - name: a\n    data: {max_length: many}\n")
    with pytest.raises(ConfigError, match=r"stages\[0\]\.data\.max_length.*expected int"):
        load_config(path)


@pytest.mark.parametrize(
    ("stages", "key", "message"),
    [
        ("[{name: a}, {name: a}]", r"stages\[1\]\.name", "duplicate"),
        ("[{name: 'a b'}]", r"stages\[0\]\.name", "letters"),
        ("[{name: a, carry: both}]", r"stages\[0\]\.carry", "expected one of"),
        ("[{name: a}, {name: b, student: {init: x}}]", r"stages\[1\]\.student\.init", "carry"),
        ("[{name: a}, {name: b, carry: teacher, teacher: {name: x}}]",
         r"stages\[1\]\.teacher\.name", "carry: none"),
    ],
)  # fmt: skip
def test_stage_mistakes_are_refused(stages, key, message):
    with pytest.raises(ConfigError, match=f"{key}.*{message}"):
        stage_plan(apply_overrides(default_recipe(), [f"stages={stages}"]))


def test_carry_none_and_an_explicit_init_start_from_another_model():
    cfg = apply_overrides(default_recipe(), ["stages=[{name: a}, {name: b, carry: none, "
                                             "student: {init: some/model}}]"])  # fmt: skip
    assert stage_plan(cfg)[1].cfg.student.init == "some/model"


def test_chain_expands_into_assistant_then_student(tmp_path):
    cfg = apply_overrides(default_recipe(), [
        f"output_dir={tmp_path}", "name=ta", "student.layers=[0, 3]",
        "chain={assistant: {layers: 4}, assistant_train: {max_steps: 20}}",
    ])  # fmt: skip
    assistant, student = stage_plan(cfg)
    assert [assistant.name, student.name] == ["assistant", "student"]
    a, s = assistant.cfg, student.cfg
    assert a.teacher.name == cfg.teacher.name  # the real teacher teaches the assistant
    assert a.student.init == "teacher" and a.student.layer_rule == "even:4" and not a.student.layers
    assert a.train.max_steps == 20 and s.train.max_steps == cfg.train.max_steps
    assert s.teacher.name == str(assistant.run_dir / "student")  # ... which teaches the student
    assert s.student.init == "teacher" and s.student.layers == [0, 3]  # cut from the assistant
    assert select_layers(6, None, a.student.layer_rule) == [0, 2, 3, 5]


def test_chain_needs_a_size_and_excludes_stages():
    with pytest.raises(ConfigError, match="chain.assistant.layers.*size"):
        stage_plan(apply_overrides(default_recipe(), ["chain={assistant: {}}"]))
    with pytest.raises(ConfigError, match="chain.*not both"):
        stage_plan(
            apply_overrides(
                default_recipe(), ["chain={assistant: {layers: 4}}", "stages=[{name: a}]"]
            )
        )


def test_even_layers_keep_first_and_last():
    assert even_layers(6, 3) == [0, 2, 5] and even_layers(6, 4) == [0, 2, 3, 5]
    assert even_layers(12, 2) == [0, 11] and even_layers(5, 5) == [0, 1, 2, 3, 4]
    assert even_layers(6, 1) == [5]
    for n in range(1, 13):
        assert len(even_layers(12, n)) == n
