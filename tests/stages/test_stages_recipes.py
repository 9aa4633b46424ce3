"""The shipped staged recipes: every stage resolves and passes the static checks, with the
stages, teachers and data each recipe's header describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnkd.config.io import load_config
from attnkd.config.stages import is_staged, stage_plan
from attnkd.validate import validate_static

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
GENERIC = ["wikitext2", "tinyshakespeare"]
TASK = ["stsb:train", "mrpc:train", "rte:train"]

EXPECTED = {
    "tinybert-sentence": ["general", "task-intermediate", "task-prediction"],
    "g2sd-sentence": ["generic", "specific"],
    "ernie-tiny-sentence": ["general", "general-enhanced", "task-adaptive", "task-specific"],
    "minilm-ta-chain": ["assistant", "student"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_staged_recipe_resolves_every_stage(name):
    cfg = load_config(RECIPES / f"{name}.yaml")
    assert is_staged(cfg)
    plan = stage_plan(cfg)
    assert [st.name for st in plan] == EXPECTED[name]
    for st in plan:
        validate_static(st.cfg)
        assert st.cfg.data.eval_task == "stsb:dev" and st.cfg.data.select_task == "stsb:val"
        assert st.cfg.train.eval_at_start  # a stage never hands on a worse student
        if st.index:
            carried = st.cfg.teacher.name if st.carry == "teacher" else st.cfg.student.init
            assert carried == str(plan[st.index - 1].run_dir / "student")


def test_generic_then_task_data():
    for name in ("tinybert-sentence", "g2sd-sentence", "ernie-tiny-sentence"):
        plan = stage_plan(load_config(RECIPES / f"{name}.yaml"))
        assert plan[0].cfg.data.train_sources == GENERIC, name
        assert plan[-1].cfg.data.train_sources == TASK, name
        assert all(st.cfg.teacher.name == TEACHER for st in plan), name
        assert "sentence_mse" in [t.name for t in plan[-1].cfg.losses], name
        assert "sentence_mse" not in [t.name for t in plan[0].cfg.losses], name


def test_ernie_tiny_changes_one_thing_per_stage():
    general, enhanced, adaptive, specific = stage_plan(
        load_config(RECIPES / "ernie-tiny-sentence.yaml")
    )
    assert enhanced.cfg.data == general.cfg.data and enhanced.cfg.losses == general.cfg.losses
    assert adaptive.cfg.losses == enhanced.cfg.losses and adaptive.cfg.data != enhanced.cfg.data
    assert specific.cfg.data == adaptive.cfg.data
    assert specific.cfg.losses[: len(adaptive.cfg.losses)] == adaptive.cfg.losses


def test_tinybert_maps_each_student_layer_to_its_cut_layer():
    general = stage_plan(load_config(RECIPES / "tinybert-sentence.yaml"))[0].cfg
    pairs = {(t.name, t.teacher_layer, t.student_layer) for t in general.losses}
    cut = general.student.layers
    for kind in ("attention_mse", "hidden_mse"):
        assert {(t, s) for n, t, s in pairs if n == kind} == {(c, i) for i, c in enumerate(cut)}


def test_chain_recipe_builds_a_four_layer_assistant():
    assistant, student = stage_plan(load_config(RECIPES / "minilm-ta-chain.yaml"))
    assert assistant.cfg.student.layer_rule == "even:4"
    assert student.carry == "teacher" and student.cfg.student.layers == [0, 3]
