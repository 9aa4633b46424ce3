"""Teacher strategies end to end on tiny images: a teacher set (per-teacher and ensemble terms),
mutual distillation, multi-exit, self-distillation generations and data partitions."""

import json

import pytest
import torch
from vision_helpers import write_tiny_fmnist

from attnkd.config.schema import (
    DataConfig,
    DistillConfig,
    LossTermConfig,
    StrategyConfig,
    StudentConfig,
    TeacherConfig,
    TeacherEntry,
    TrainConfig,
)
from attnkd.distill import run_distill
from attnkd.vision.data import accuracy
from attnkd.vision.idx import load_fashion_mnist
from attnkd.vision.io import load_image_model


def _cfg(tmp_path, name, teacher="none", losses=("ce",), steps=6, **kw):
    return DistillConfig(
        name=name, output_dir=str(tmp_path / "runs"), task="image_classification",
        teacher=TeacherConfig(name=teacher), student=StudentConfig(init="cnn:tiny"),
        losses=[LossTermConfig(name=n) if isinstance(n, str) else n for n in losses],
        data=DataConfig(image_dir=str(tmp_path / "data"), val_fraction=0.2),
        train=TrainConfig(lr=2e-2, max_steps=steps, batch_size=16, eval_every=steps,
                          save_every=steps, log_every=1, warmup_ratio=0.0),
        **kw,
    )  # fmt: skip


@pytest.fixture
def teachers(tmp_path):
    """Two tiny trained teachers (different seeds), as exported folders."""
    torch.set_num_threads(1)
    write_tiny_fmnist(tmp_path / "data", 120, 40)
    out = []
    for seed in (0, 1):
        cfg = _cfg(tmp_path, f"t{seed}", steps=8)
        cfg.train.seed = seed
        run_distill(cfg, progress=False)
        out.append(str(tmp_path / "runs" / f"t{seed}" / "student"))
    return out


def _logged(tmp_path, name):
    lines = [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").open()]
    return set().union(*(x.get("terms", {}).keys() for x in lines if x["event"] == "train"))


def test_teacher_set_runs_with_per_teacher_and_ensemble_terms(tmp_path, teachers):
    cfg = _cfg(tmp_path, "ens", teacher="none", losses=[LossTermConfig(name="image_kd")],
               teachers=[TeacherEntry(name=teachers[0], weight=3.0),
                         TeacherEntry(name=teachers[1], label="b",
                                      losses=[LossTermConfig(name="at", teacher_layer=1,
                                                             student_layer=1)])])  # fmt: skip
    cfg.teacher = TeacherConfig()  # a teacher set leaves `teacher` unset
    res = run_distill(cfg, progress=False)
    logged = _logged(tmp_path, "ens")
    assert {"ensemble:image_kd@2>2/kd", "b:at@1>1/at"} <= logged
    assert [t["label"] for t in res["teachers"]] == ["t0", "b"]
    test = load_fashion_mnist("test", str(tmp_path / "data"))
    models = [load_image_model(p) for p in teachers]
    for entry, m in zip(res["teachers"], models, strict=True):
        assert entry["accuracy"] == pytest.approx(accuracy(m, test))
    # "the teacher" is the ensemble: argmax of 0.75·p_t0 + 0.25·p_b
    from attnkd.teachers.load import EnsembleClassifier

    assert res["teacher"]["accuracy"] == pytest.approx(
        accuracy(EnsembleClassifier(models, [3.0, 1.0]), test)
    )


def test_random_init_teacher_is_reinitialised(tmp_path, teachers):
    from attnkd.tasks import get_task
    from attnkd.teachers.load import load_members

    cfg = _cfg(tmp_path, "r", teachers=[TeacherEntry(name=teachers[0], random_init=True),
                                        TeacherEntry(name=teachers[0])])  # fmt: skip
    members, _ = load_members(cfg, get_task("image_classification"))
    a, b = (dict(m.model.named_parameters()) for m in members)
    assert not torch.equal(a["stages.0.0.0.weight"], b["stages.0.0.0.weight"])
    assert all(not p.requires_grad for m in members for p in m.model.parameters())
    again, _ = load_members(cfg, get_task("image_classification"))  # seeded
    assert torch.equal(dict(again[0].model.named_parameters())["head.weight"], a["head.weight"])


def test_mutual_run_trains_and_exports_both(tmp_path, teachers):
    cfg = _cfg(tmp_path, "mut", losses=("ce", "image_kd"), strategy=StrategyConfig(peer="cnn:tiny"))
    res = run_distill(cfg, progress=False)
    assert "accuracy" in res["peer"] and res["teacher"] == {"name": "none"}
    logged = _logged(tmp_path, "mut")
    assert {"student/image_kd@2>2/kd", "peer/image_kd@2>2/kd"} <= logged
    peer = load_image_model(str(tmp_path / "runs" / "mut" / "peer"))
    fresh = load_image_model("cnn:tiny")
    assert not torch.equal(peer.head.weight, fresh.head.weight)


def test_multi_exit_run(tmp_path, teachers):
    exits = [LossTermConfig(name="exit_kd", student_layer=i, gt_weight=0.5) for i in (0, 1)]
    res = run_distill(_cfg(tmp_path, "exit", losses=["ce", *exits]), progress=False)
    assert {"exit_kd@0/kd", "exit_kd@1/wce"} <= _logged(tmp_path, "exit")
    # the exported student is the plain model: the exits are training-only
    exported = load_image_model(str(tmp_path / "runs" / "exit" / "student"))
    assert type(exported).__name__ == "ImageCNN" and res["student"]["accuracy"] >= 0


def test_generations_chain_teacher_is_previous_student(tmp_path, teachers):
    from attnkd.config.io import load_config

    mixed = LossTermConfig(name="mixed_kd", gt_weight=0.3, temperature=2.0)
    cfg = _cfg(tmp_path, "sd", teacher=teachers[0], losses=[mixed],
               strategy=StrategyConfig(generations=3))  # fmt: skip
    summary = run_distill(cfg, progress=False)
    runs = [g["run"] for g in summary["generations"]]
    assert runs == ["sd-gen0", "sd-gen1", "sd-gen2"]
    assert summary["generations"][0]["teacher"] == teachers[0]
    for g in (1, 2):
        c = load_config(tmp_path / "runs" / f"sd-gen{g}" / "config.yaml")
        assert c.teacher.name == str(tmp_path / "runs" / f"sd-gen{g - 1}" / "student")
    on_disk = json.loads((tmp_path / "runs" / "sd" / "generations.json").read_text())
    assert [g["run"] for g in on_disk["generations"]] == runs
    again = run_distill(cfg, progress=False)  # finished generations are skipped
    assert again["generations"][2]["results"] == summary["generations"][2]["results"]


def test_partitions_are_disjoint_and_cover_the_training_data(tmp_path, teachers):
    cfg = _cfg(tmp_path, "part", teacher=teachers[0], losses=("ce", "image_kd"),
               strategy=StrategyConfig(partitions=3))  # fmt: skip
    summary = run_distill(cfg, progress=False)
    infos = [p["results"]["train"]["partition"] for p in summary["partitions"]]
    assert [i["part"] for i in infos] == [0, 1, 2] and {i["of"] for i in infos} == {3}
    total = summary["partitions"][0]["results"]["train"]["train_images"]
    assert sum(i["items"] for i in infos) == total


def test_cli_runs_generations_and_refuses_a_bad_teacher_set(tmp_path, teachers, capsys):
    from attnkd.cli import main
    from attnkd.config.io import dump_yaml

    cfg = _cfg(tmp_path, "cli", teacher=teachers[0], losses=("ce", "image_kd"), steps=2,
               strategy=StrategyConfig(generations=2))  # fmt: skip
    dump_yaml(cfg, tmp_path / "g.yaml")
    assert main(["distill", str(tmp_path / "g.yaml"), "--no-progress"]) == 0
    assert (tmp_path / "runs" / "cli-gen1" / "student").is_dir()
    capsys.readouterr()
    pair = [TeacherEntry(name=teachers[0]), TeacherEntry(name=teachers[1])]
    bad = _cfg(tmp_path, "bad", losses=[LossTermConfig(name="mixed_kd", gt_weight=2.0)],
               teachers=pair)  # fmt: skip
    bad.teacher = TeacherConfig()
    dump_yaml(bad, tmp_path / "bad.yaml")
    assert main(["validate", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "losses[0].gt_weight" in err and "Traceback" not in err
