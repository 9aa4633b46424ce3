"""OFA exit heads, DMAE on masked inputs and the DDK mixture inside the classification step and
in tiny end-to-end runs: what each term trains, what the teacher and student see, what is
exported, and that a DDK run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnkd.config.schema import DistillConfig, LossTermConfig
from attnkd.distill import Distiller, run_distill
from attnkd.errors import ConfigError
from attnkd.losses.cls_losses import ofa_target_loss
from attnkd.losses.features import mean_pool
from attnkd.losses.terms import build_terms
from attnkd.models.adapters import geometry
from attnkd.tasks.sequence_classification import load
from attnkd.tasks.sequence_classification_step import make_step
from attnkd.validate import validate_static


def _models(model_dir: Path, layers=(1, 3)):
    from attnkd.students.build import build_student

    m = load(str(model_dir))
    teacher, tok = m.model.eval(), m.tokenizer
    student, _ = build_student(teacher, list(layers))
    return teacher, student.train(), tok


def _batch(tok, masked: bool = False):
    enc = tok(["a big dog is playing in the park .", "the cat is sad", "a red bird"],
              padding=True, return_tensors="pt")  # fmt: skip
    batch = {**enc, "labels": torch.tensor([1, 0, 1])}
    if masked:
        from attnkd.data.token_mask import TokenMasker

        batch = TokenMasker(tok, 0.4, seed=0)(batch, 0)
    return batch


def test_exit_head_trains_with_the_layers_below_it_against_the_teacher(tiny_model_dir):
    teacher, student, tok = _models(tiny_model_dir)
    cfg = LossTermConfig(name="cls_ofa_exit", student_layer=0, gamma=1.5, temperature=2.0)
    terms = build_terms([cfg], geometry(teacher.config), geometry(student.config))
    with pytest.raises(ValueError, match="intermediate student layer"):
        build_terms([LossTermConfig(name="cls_ofa_exit", student_layer=-1)],
                    geometry(teacher.config), geometry(student.config))  # fmt: skip
    distiller = Distiller(student.eval(), terms)  # no dropout: the value is compared by hand
    step = make_step(teacher, distiller)  # sizes the exit head from the student's labels
    head = terms[0].head
    assert head.fc.out_features == student.config.num_labels
    batch = _batch(tok)
    out = step(batch)
    # the same value by hand: head(mean-pooled layer-0 states) against the teacher's logits
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        t_logits = teacher(**inputs).logits
        hidden = student(**inputs, output_hidden_states=True).hidden_states[1]
        mask = batch["attention_mask"].bool()
        ref = ofa_target_loss(head(mean_pool(hidden, mask)), t_logits, batch["labels"], 1.5, 2.0)
    assert out.terms["cls_ofa_exit@0/ofa"] == pytest.approx(float(ref), rel=1e-5)
    out.loss.backward()
    grads = {n: p.grad for n, p in distiller.named_parameters()}
    assert grads["terms.0.head.fc.weight"].abs().sum() > 0
    assert grads["student.bert.encoder.layer.0.attention.self.query.weight"].abs().sum() > 0
    above = [n for n in grads if ".layer.1." in n or n.startswith("student.classifier")]
    assert above and all(grads[n] is None for n in above)  # nothing above the exit learns
    assert all(p.grad is None for p in teacher.parameters())


def test_dmae_student_reads_the_masked_row_and_the_teacher_stops_early(tiny_model_dir):
    teacher, student, tok = _models(tiny_model_dir)
    specs = [LossTermConfig(name="cls_ce"),
             LossTermConfig(name="dmae", teacher_layer=1, student_layer=0)]  # fmt: skip
    terms = build_terms(specs, geometry(teacher.config), geometry(student.config))
    seen = {}
    teacher.bert.embeddings.register_forward_hook(
        lambda m, a, o: seen.__setitem__("t", a[0].clone()) if a else None
    )
    ran = []
    for i, layer in enumerate(teacher.bert.encoder.layer):
        layer.register_forward_hook(lambda *a, i=i: ran.append(i))
    student_ids = []
    student.bert.embeddings.register_forward_pre_hook(
        lambda m, args, kw: student_ids.append(kw.get("input_ids")), with_kwargs=True
    )
    teacher_ids = []
    teacher.bert.embeddings.register_forward_pre_hook(
        lambda m, args, kw: teacher_ids.append(kw.get("input_ids")), with_kwargs=True
    )
    step = make_step(teacher, Distiller(student, terms))
    batch = _batch(tok, masked=True)
    out = step(batch)
    assert ran == [0, 1]  # the truncated teacher: layers 2 and 3 and the head never ran
    assert torch.equal(teacher_ids[0], batch["input_ids"])
    assert torch.equal(student_ids[0], batch["student_input_ids"])
    assert (student_ids[0][batch["masked_tokens"]] == tok.mask_token_id).all()
    assert out.terms["dmae@1>0/mse"] > 0
    out.loss.backward()
    assert terms[1].projector.linear.weight.grad.abs().sum() > 0


def test_static_checks_name_the_key():
    cfg = DistillConfig(task="sequence_classification")
    cfg.data.eval_task, cfg.data.select_task = "sst2:heldout", "sst2:val"
    cfg.student.layers = [0, 2]
    cfg.losses = [LossTermConfig(name="dmae")]
    with pytest.raises(ConfigError, match=r"losses\[0\].name.*data.mask_ratio"):
        validate_static(cfg)
    cfg.data.mask_ratio = 1.0
    with pytest.raises(ConfigError, match="data.mask_ratio"):
        validate_static(cfg)
    cfg.data.mask_ratio, cfg.data.mixture = 0.3, "ddk"
    with pytest.raises(ConfigError, match="data.mixture.*unlabeled"):
        validate_static(cfg)
    cfg.data.unlabeled_sources, cfg.data.mixture_smooth = ["wikitext2"], 1.0
    with pytest.raises(ConfigError, match="data.mixture_smooth"):
        validate_static(cfg)
    cfg.data.mixture_smooth, cfg.train.max_steps, cfg.data.mixture_every = 0.5, 10**6, 10
    with pytest.raises(ConfigError, match="data.mixture_every"):
        validate_static(cfg)
    sentence = DistillConfig()
    sentence.student.layers = [0, 2]
    sentence.losses = [LossTermConfig(name="cls_ofa_exit")]
    with pytest.raises(ConfigError, match="sequence_classification"):
        validate_static(sentence)


# ---------------------------------------------------------------- tiny runs


def _run_cfg(name, root: Path, model: Path, data: Path, extra: Path) -> DistillConfig:
    cfg = DistillConfig(name=name, output_dir=str(root), task="sequence_classification")
    cfg.teacher.name = str(model)
    cfg.student.init, cfg.student.layers = "teacher", [1, 3]
    cfg.losses = [
        LossTermConfig(name="cls_ce", weight=0.5),
        LossTermConfig(name="cls_ofa", weight=0.5, gamma=1.5),
        LossTermConfig(name="cls_ofa_exit", student_layer=0, weight=0.3, gamma=1.5),
        LossTermConfig(name="dmae", teacher_layer=1, student_layer=0, weight=0.5),
    ]
    d = cfg.data
    d.data_dir, d.eval_task, d.select_task, d.max_length = str(data), "sst2:heldout", "sst2:val", 32
    d.unlabeled_sources = [f"file:{extra}"]
    d.mask_ratio, d.mixture, d.mixture_every, d.mixture_probe = 0.3, "ddk", 2, 8
    t = cfg.train
    t.max_steps, t.batch_size, t.eval_every, t.save_every, t.log_every = 6, 8, 3, 3, 1
    t.lr, t.warmup_ratio = 3e-3, 0.0
    return cfg


@pytest.fixture
def small_sst2(monkeypatch):
    from attnkd.data import cls_splits as cs

    monkeypatch.setattr(cs, "SST2_HELDOUT", 10)


@pytest.fixture
def extra_text(tmp_path) -> Path:
    import random

    from int_helpers import make_sentence

    rng = random.Random(5)
    path = tmp_path / "extra.txt"
    path.write_text("\n".join(make_sentence(rng) for _ in range(60)) + "\n", encoding="utf-8")
    return path


def test_a_run_with_exits_dmae_and_ddk_exports_only_the_student(
    tmp_path, tiny_model_dir, cls_data, small_sst2, extra_text
):
    from transformers import AutoModelForSequenceClassification

    cfg = _run_cfg("m", tmp_path / "runs", tiny_model_dir, cls_data, extra_text)
    res = run_distill(cfg, progress=False)
    run = tmp_path / "runs" / "m"
    mix = res["mixture"]
    assert mix["domains"] == ["sst2:train", f"file:{extra_text}"]
    assert res["train"]["mixture"]["train_rows"][1] == 60 - 8  # probe rows held out
    assert 1 <= len(mix["weights"]) <= 3 and len(mix["gaps"]) == len(mix["weights"])
    for w in mix["weights"]:
        assert sum(w) == pytest.approx(1.0) and min(w) >= 0.1 / 2 - 1e-9
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in logged if e.get("event") == "train"]
    assert train and all("mixture/w0" in e["terms"] and "cls_ofa_exit@0/ofa" in e["terms"]
                         and "dmae@1>0/mse" in e["terms"] for e in train)  # fmt: skip
    ckpt = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert "task_state.weights" in ckpt and "terms.2.head.fc.weight" in ckpt
    exported = load_file(str(run / "student" / "model.safetensors"))
    assert not any("head.fc" in k or "projector" in k or "task_state" in k for k in exported)
    model = AutoModelForSequenceClassification.from_pretrained(run / "student")
    assert model.config.num_hidden_layers == 2 and res["train"]["mask_ratio"] == 0.3


def test_a_ddk_run_resumes_with_the_weights_of_an_uninterrupted_one(
    tmp_path, tiny_model_dir, cls_data, small_sst2, extra_text, monkeypatch
):
    from attnkd.data.mixture import DomainMixtureBatches

    full_cfg = _run_cfg("full", tmp_path / "runs", tiny_model_dir, cls_data, extra_text)
    full = run_distill(full_cfg, progress=False)
    cfg = _run_cfg("cut", tmp_path / "runs", tiny_model_dir, cls_data, extra_text)
    original = DomainMixtureBatches.batch_at
    calls = []

    def interrupt(self, epoch, index):
        calls.append(1)
        if len(calls) == 5:  # before step 5, whose batch brings the update at micro-batch 4
            raise KeyboardInterrupt
        return original(self, epoch, index)

    monkeypatch.setattr(DomainMixtureBatches, "batch_at", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg, progress=False)
    monkeypatch.setattr(DomainMixtureBatches, "batch_at", original)
    resumed = run_distill(cfg, progress=False, resume=True)
    assert resumed["train"]["resumed_from"] == "step-00000004"
    assert resumed["mixture"] == full["mixture"]
    a = load_file(str(tmp_path / "runs/full/checkpoints/last/model.safetensors"))
    b = load_file(str(tmp_path / "runs/cut/checkpoints/last/model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # bitwise (the history's rows not reached yet are NaN in both)
        assert torch.allclose(a[key], b[key], rtol=0, atol=0, equal_nan=True), key
