"""End to end on a tiny BERT: the teacher stage runs first (teacher.recipe), a 2-layer student
distils from it, the export loads with AutoModelForSequenceClassification and its labels, and
a student trained from labels alone reports no teacher score. Bad splits exit 2 from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnkd.cli import main
from attnkd.config.io import dump_yaml, load_config
from attnkd.config.schema import DistillConfig, LossTermConfig
from attnkd.distill import run_distill


def _cfg(name, root: Path, model: Path, data: Path, ds: str = "mrpc", **kw) -> DistillConfig:
    cfg = DistillConfig(name=name, output_dir=str(root), task="sequence_classification")
    cfg.teacher.name = str(model)
    cfg.student.init = str(model)
    cfg.losses = [LossTermConfig(name="cls_ce")]
    cfg.data.data_dir = str(data)
    cfg.data.eval_task, cfg.data.select_task = f"{ds}:dev", f"{ds}:val"
    cfg.data.max_length = 48
    cfg.data.val_fraction = 0.2
    t = cfg.train
    t.max_steps, t.batch_size, t.eval_every, t.save_every, t.log_every = 8, 8, 4, 4, 2
    t.lr, t.warmup_ratio = 3e-3, 0.0
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture
def teacher_recipe(tmp_path, tiny_model_dir, cls_data) -> tuple[Path, Path]:
    cfg = _cfg("t", tmp_path / "runs", tiny_model_dir, cls_data)
    path = tmp_path / "t.yaml"
    dump_yaml(cfg, path)
    return path, tmp_path / "runs" / "t" / "student"


def test_teacher_stage_then_distilled_student_exports_with_labels(
    tmp_path, tiny_model_dir, cls_data, teacher_recipe
):
    from transformers import AutoModelForSequenceClassification

    recipe, teacher_out = teacher_recipe
    cfg = _cfg("s", tmp_path / "runs", tiny_model_dir, cls_data)
    cfg.teacher.name, cfg.teacher.recipe = str(teacher_out), str(recipe)
    cfg.student.init, cfg.student.layers = "teacher", [1, 3]
    cfg.losses = [
        LossTermConfig(name="cls_ce", weight=0.5),
        LossTermConfig(name="cls_kd", weight=0.5, temperature=2.0),
        LossTermConfig(name="hidden_mse", teacher_layer=3, student_layer=1),
        LossTermConfig(name="relation", relation_heads=4),
    ]
    res = run_distill(cfg, progress=False)
    assert (teacher_out / "model.safetensors").is_file()  # the stage ran first
    assert res["train"]["teacher_used"] and res["student"]["layers"] == 2
    assert 0.0 <= res["teacher"]["accuracy"] <= 1.0 and "f1" in res["teacher"]
    assert res["retention"] == pytest.approx(
        res["student"]["accuracy"] / res["teacher"]["accuracy"]
    )
    assert res["eval_split"] == "mrpc:dev" and res["train"]["held_out_removed"]["mrpc:dev"] >= 1
    terms = [
        line
        for line in (tmp_path / "runs/s/metrics.jsonl").read_text().splitlines()
        if '"train"' in line and "cls_kd" in line
    ]
    assert terms, "the KD term was logged"

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "runs/s/student")
    assert model.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    assert model.config.label2id == {"not_equivalent": 0, "equivalent": 1}
    assert model.config.num_hidden_layers == 2
    # the exported student scores on dev exactly what the run reported
    from transformers import AutoTokenizer

    from attnkd.eval.classification import predict, score
    from attnkd.tasks.sequence_classification import Encoded, task_splits

    tok = AutoTokenizer.from_pretrained(tmp_path / "runs/s/student")
    enc = Encoded(tok, task_splits(cfg).eval, cfg.data.max_length)
    assert any(1 in r["token_type_ids"] for r in enc.rows)  # pairs: two segments
    got = score(predict(model, enc.rows, enc.pad), enc.labels)
    assert got.accuracy == pytest.approx(res["student"]["accuracy"])


def test_labels_only_baseline_reports_no_teacher(tmp_path, tiny_model_dir, cls_data):
    cfg = _cfg("b", tmp_path / "runs", tiny_model_dir, cls_data, ds="rte")
    cfg.student.init, cfg.student.layers = "teacher", [0, 3]
    res = run_distill(cfg, progress=False)
    assert res["teacher"] == {"name": str(tiny_model_dir), "params": res["teacher"]["params"]}
    assert res["retention"] is None and not res["train"]["teacher_used"]
    assert res["labels"] == ["entailment", "not_entailment"]


def test_step_never_runs_the_teacher_without_a_teacher_term(tiny_model_dir, cls_data, tmp_path):
    from attnkd.distill import Distiller
    from attnkd.losses.terms import build_terms
    from attnkd.models.adapters import geometry
    from attnkd.tasks.sequence_classification import load, make_step

    m = load(str(tiny_model_dir))
    calls = []
    m.model.register_forward_hook(lambda *a: calls.append(1))
    g = geometry(m.model.config)
    student = load(str(tiny_model_dir), tokenizer=False).model
    terms = build_terms([LossTermConfig(name="cls_ce")], g, g)
    step = make_step(m.model, Distiller(student, terms))
    batch = m.tokenizer(["a dog", "the cat is red"], padding=True, return_tensors="pt")
    out = step({**batch, "labels": torch.tensor([0, 1])})
    assert not calls and out.loss.requires_grad and out.num_items == 2


def test_bad_split_exits_2_naming_the_key(tmp_path, tiny_model_dir, cls_data, capsys):
    path = tmp_path / "c.yaml"
    dump_yaml(_cfg("c", tmp_path / "runs", tiny_model_dir, cls_data), path)
    assert load_config(path).task == "sequence_classification"
    assert main(["validate", str(path)]) == 0
    assert main(["validate", str(path), "data.eval_task=sst2:dev"]) == 2
    assert "data.eval_task" in capsys.readouterr().err
    assert main(["validate", str(path), "data.select_task=rte:val"]) == 2
    assert "data.select_task" in capsys.readouterr().err
    assert main(["validate", str(path), "data.unlabeled_sources=[wikitext2]"]) == 2
    assert not (tmp_path / "runs" / "c").exists()


def test_assistant_chain_of_teacher_stages_validates_before_any_ran(
    tmp_path, tiny_model_dir, cls_data, teacher_recipe, capsys
):
    """sst2-l2's shape: its teacher is an assistant that a recipe trains, whose own teacher a
    third recipe trains; nothing has run yet, so validation resolves down to the packaged
    model. A loop of teacher stages is refused naming teacher.recipe."""
    t_recipe, t_out = teacher_recipe
    runs = tmp_path / "runs"
    assistant = _cfg("a", runs, tiny_model_dir, cls_data)
    assistant.teacher.name, assistant.teacher.recipe = str(t_out), str(t_recipe)
    assistant.student.init, assistant.student.layers = "teacher", [0, 2, 3]
    a_path = tmp_path / "a.yaml"
    dump_yaml(assistant, a_path)
    student = _cfg("s", runs, tiny_model_dir, cls_data)
    student.teacher.name, student.teacher.recipe = str(runs / "a" / "student"), str(a_path)
    student.student.init, student.student.layers = "teacher", [0, 2]
    s_path = tmp_path / "s.yaml"
    dump_yaml(student, s_path)
    assert main(["validate", str(s_path)]) == 0
    assert not runs.exists()  # validation trains nothing
    looped = _cfg("a", runs, tiny_model_dir, cls_data)
    looped.teacher.name, looped.teacher.recipe = str(runs / "s" / "student"), str(s_path)
    looped.student.init, looped.student.layers = "teacher", [0, 2, 3]
    dump_yaml(looped, a_path)
    assert main(["validate", str(s_path)]) == 2
    err = capsys.readouterr().err
    assert "teacher.recipe" in err and "loop" in err
