"""Student building: layer selection rules, exact weight inheritance, narrower students."""

from __future__ import annotations

import pytest
import torch
from int_helpers import LAYERS, WIDTH, bert_config, tiny_bert, tiny_mpnet

from attnkd.capture import Capture, Tap
from attnkd.students.build import build_student, select_layers


@pytest.mark.parametrize(
    ("num_layers", "layers", "rule", "expected"),
    [
        (12, None, "every:2", [1, 3, 5, 7, 9, 11]),
        (12, None, "every:4", [3, 7, 11]),
        (6, None, "every:1", [0, 1, 2, 3, 4, 5]),
        (6, None, "every:6", [5]),
        (6, None, "first:3", [0, 1, 2]),
        (6, None, "last:2", [4, 5]),
        (6, [0, 2, 5], "", [0, 2, 5]),
        (6, [0, 2, -1], "", [0, 2, 5]),
        (6, [1, 3], "every:2", [1, 3]),  # an explicit list wins over the rule
    ],
)
def test_select_layers_rules(num_layers, layers, rule, expected):
    assert select_layers(num_layers, layers, rule) == expected


@pytest.mark.parametrize(
    ("layers", "rule", "error", "match"),
    [
        ([0, 9], "", IndexError, "student.layers index 9 out of range"),
        ([-7], "", IndexError, "out of range"),
        ([2, 0], "", ValueError, "increasing and unique"),
        ([1, 1], "", ValueError, "increasing and unique"),
        ([0, 5, -1], "", ValueError, "increasing and unique"),  # -1 is 5
        (None, "", ValueError, "give student.layers or student.layer_rule"),
        (None, "every:0", ValueError, "must be in 1..6"),
        (None, "first:7", ValueError, "must be in 1..6"),
        (None, "every:x", ValueError, "expected 'every:k'"),
        (None, "middle:2", ValueError, "expected 'every:k'"),
        (None, "last", ValueError, "expected 'every:k'"),
    ],
)
def test_select_layers_rejects(layers, rule, error, match):
    with pytest.raises(error, match=match):
        select_layers(6, layers, rule)


def test_student_copies_embeddings_and_chosen_layers_exactly():
    teacher = tiny_bert(seed=0)
    chosen = [1, 3]
    student, report = build_student(teacher, chosen)
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == 2
    assert report.layers == chosen and report.fresh == []
    assert student is not teacher and student.training and not teacher.training
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    for name, p in s_params.items():
        assert p.requires_grad
        if name.startswith("encoder.layer."):
            j, rest = name.removeprefix("encoder.layer.").split(".", 1)
            src = t_params[f"encoder.layer.{chosen[int(j)]}.{rest}"]
        else:
            src = t_params[name]
        assert torch.equal(p, src), name
        assert p.data_ptr() != src.data_ptr(), f"{name} shares storage with the teacher"
    assert sorted(report.inherited) == sorted(student.state_dict())
    with torch.no_grad():  # training the student must not touch the teacher
        next(student.parameters()).add_(1.0)
    assert not torch.equal(next(student.parameters()), next(teacher.parameters()))


def test_student_of_all_layers_reproduces_the_teacher(batch):
    teacher = tiny_bert(seed=1)
    student, _ = build_student(teacher, list(range(LAYERS)), attn_implementation="eager")
    assert student.config._attn_implementation == "eager"
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(student(**batch)[0], teacher(**batch)[0], atol=1e-5, rtol=0)


def test_student_first_block_matches_the_teacher_first_block(batch):
    teacher = tiny_bert(seed=1)
    student, _ = build_student(teacher, [0, 2])
    student.eval()
    with torch.no_grad(), Capture(teacher, [Tap("hidden", 0)]) as ct:
        teacher(**batch)
    with torch.no_grad(), Capture(student, [Tap("hidden", 0)]) as cs:
        out = student(**batch)[0]
    torch.testing.assert_close(cs.taps.get("hidden", 0), ct.taps.get("hidden", 0))
    assert out.shape == (*batch["input_ids"].shape, WIDTH)


def test_narrow_student_reports_fresh_tensors_and_runs(batch):
    teacher = tiny_bert(seed=0)
    student, report = build_student(teacher, [0, 3], hidden_size=16, num_heads=2)
    assert student.config.hidden_size == 16 and student.config.num_attention_heads == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert set(report.inherited) | set(report.fresh) == set(s_state)
    assert not set(report.inherited) & set(report.fresh)
    assert "embeddings.word_embeddings.weight" in report.fresh
    assert "encoder.layer.0.attention.self.query.weight" in report.fresh
    for key in report.inherited:  # only shape-preserving tensors (e.g. the FFN bias of 64)
        src = key.replace("encoder.layer.1.", "encoder.layer.3.")
        assert torch.equal(s_state[key], t_state[src]), key
    for key in report.fresh:
        src = key.replace("encoder.layer.1.", "encoder.layer.3.")
        assert s_state[key].shape != t_state[src].shape, key
    student.eval()
    with torch.no_grad():
        out = student(**batch)[0]
    assert out.shape == (*batch["input_ids"].shape, 16) and torch.isfinite(out).all()


def test_width_not_divisible_by_heads_is_rejected():
    with pytest.raises(ValueError, match="not divisible by 4 heads"):
        build_student(tiny_bert(), [0], hidden_size=30)


def test_mpnet_student_inherits_and_falls_back_to_eager(batch):
    teacher = tiny_mpnet(seed=4)
    student, report = build_student(teacher, [0, 3], attn_implementation="sdpa")
    assert student.config._attn_implementation == "eager"  # MPNet has no fused attention
    assert report.fresh == []
    t_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(value, t_state[key.replace("encoder.layer.1.", "encoder.layer.3.")])
    bias_s, bias_t = (m.encoder.relative_attention_bias.weight for m in (student, teacher))
    assert torch.equal(bias_s, bias_t)
    student.eval()
    with torch.no_grad():
        assert torch.isfinite(student(**batch)[0]).all()


def test_task_model_student_keeps_head_and_prefix():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(bert_config(num_labels=3)).eval()
    student, report = build_student(teacher, [2])
    assert isinstance(student, BertForSequenceClassification)
    assert report.fresh == []
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)
    assert torch.equal(
        student.bert.encoder.layer[0].output.dense.weight,
        teacher.bert.encoder.layer[2].output.dense.weight,
    )
