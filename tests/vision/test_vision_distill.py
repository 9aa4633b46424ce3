"""The image task end to end on tiny idx files: teacher stage, every image loss term, export."""

import json

import pytest
import torch
from vision_helpers import write_tiny_fmnist

from attnkd.config.io import dump_yaml
from attnkd.config.schema import (
    DataConfig,
    DistillConfig,
    LossTermConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)
from attnkd.distill import run_distill
from attnkd.errors import ConfigError
from attnkd.losses.terms import TERMS, VisionTerm
from attnkd.validate import validate
from attnkd.vision.io import load_image_model


def _cfg(tmp_path, name, teacher="none", student="cnn:tiny", losses=("ce",), recipe="", steps=6):
    return DistillConfig(
        name=name, output_dir=str(tmp_path / "runs"), task="image_classification",
        teacher=TeacherConfig(name=teacher, recipe=recipe),
        student=StudentConfig(init=student),
        losses=[LossTermConfig(name=n) for n in losses],
        data=DataConfig(image_dir=str(tmp_path / "data"), val_fraction=0.2),
        train=TrainConfig(lr=2e-2, max_steps=steps, batch_size=16, eval_every=3, save_every=3,
                          log_every=3, warmup_ratio=0.0),
    )  # fmt: skip


@pytest.fixture
def data(tmp_path):
    torch.set_num_threads(1)
    write_tiny_fmnist(tmp_path / "data", 120, 40)


def test_teacher_stage_then_every_image_term(tmp_path, data):
    teacher_cfg = _cfg(tmp_path, "t", student="cnn:small", steps=40)
    dump_yaml(teacher_cfg, tmp_path / "t.yaml")
    folder = str(tmp_path / "runs" / "t" / "student")
    names = [n for n in TERMS if issubclass(TERMS.get(n).cls, VisionTerm)]
    # this module's terms; the teaching terms (exit_kd, mixed_kd) are tested in tests/teachers
    names = [n for n in names if TERMS.get(n).cls.__module__ == "attnkd.losses.terms.vision"]
    names = [n for n in names if not n.startswith("deit")]
    cfg = _cfg(tmp_path, "s", teacher=folder, losses=names, recipe=str(tmp_path / "t.yaml"))
    for term in cfg.losses:  # exit_kd reads an intermediate stage (its default is the last)
        if term.name == "exit_kd":
            term.student_layer = 0
    res = run_distill(cfg, progress=False)  # runs the teacher recipe first
    t_res = json.loads((tmp_path / "runs" / "t" / "results.json").read_text())
    assert t_res["student"]["accuracy"] > 0.3  # 40 steps on the toy bands already learn
    assert res["teacher"]["accuracy"] == pytest.approx(t_res["student"]["accuracy"])
    assert 0.0 <= res["student"]["accuracy"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "runs" / "s" / "metrics.jsonl").open()]
    logged = set().union(*(x.get("terms", {}).keys() for x in lines if x["event"] == "train"))
    for n in names:
        assert any(k.startswith(n + "@") for k in logged), n
    assert load_image_model(str(tmp_path / "runs" / "s" / "student"))(
        torch.zeros(1, 1, 28, 28)).shape == (1, 10)  # fmt: skip


def test_max_images_trains_on_a_balanced_part(tmp_path, data):
    cfg = _cfg(tmp_path, "few", steps=2)
    cfg.data.max_images = 40
    res = run_distill(cfg, progress=False)
    assert res["train"]["train_images"] == 40 and res["train"]["val_images"] == 24
    cfg.data.max_images = 8  # fewer than one batch of 16
    with pytest.raises(ConfigError, match=r"data\.max_images.*batch_size \(16\)"):
        validate(cfg)


def test_vit_with_distillation_token(tmp_path, data):
    run_distill(_cfg(tmp_path, "t", steps=3), progress=False)
    folder = str(tmp_path / "runs" / "t" / "student")
    for kind in ("deit_hard", "deit_soft"):
        res = run_distill(_cfg(tmp_path, kind, folder, "vit:micro", ("ce", kind)), progress=False)
        assert res["student"]["params"] > 0 and "accuracy" in res["teacher"]


def test_validation_errors_name_the_key(tmp_path, data):
    with pytest.raises(ConfigError, match=r"losses\[1\]\.name.*needs a teacher"):
        validate(_cfg(tmp_path, "x", losses=("ce", "at")))
    with pytest.raises(ConfigError, match=r"teacher\.name.*folder not found"):
        validate(_cfg(tmp_path, "x", teacher=str(tmp_path / "missing"), losses=("ce", "at")))
    with pytest.raises(ConfigError, match=r"losses\[0\]\.name.*not an image loss"):
        validate(_cfg(tmp_path, "x", losses=("relation",)))
    with pytest.raises(ConfigError, match=r"student\.init"):
        validate(_cfg(tmp_path, "x", student="cnn:nope"))
    bad = _cfg(tmp_path, "x")
    bad.data.image_dir = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"data\.image_dir.*train-images-idx3-ubyte"):
        validate(bad)
