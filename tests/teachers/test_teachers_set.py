"""A teacher set on token batches (tiny BERTs): per-teacher terms only see their teacher, the
ensemble term sees the mean, random-init teachers, validation of the set; mutual gradients."""

import json

import pytest
import torch
import torch.nn.functional as F
from int_helpers import tiny_bert

from attnkd.config.io import apply_overrides
from attnkd.config.schema import (
    DistillConfig,
    LossTermConfig,
    StrategyConfig,
    TeacherConfig,
    TeacherEntry,
)
from attnkd.distill import Distiller, make_step, run_distill
from attnkd.errors import ConfigError
from attnkd.losses import sentence_embedding_mse
from attnkd.losses.terms import build_terms
from attnkd.models.adapters import geometry
from attnkd.models.load import freeze
from attnkd.students.build import build_student
from attnkd.teachers.set import Member, build_set_terms, reinit_
from attnkd.teachers.steps import make_set_step
from attnkd.validate import validate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RELATION = LossTermConfig(name="relation", relations=["qq", "vv"])
HIDDEN = LossTermConfig(name="hidden_mse", teacher_layer=2, student_layer=1)
SENTENCE = LossTermConfig(name="sentence_mse")


@pytest.fixture
def batch(tokenizer):
    """Three sentences of different lengths, padded (the mask has zeros)."""
    sentences = ["a big dog is running in the park .", "a cat .", "the old man is sitting"]
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _set(t0, t1):
    cfg = DistillConfig(
        teachers=[TeacherEntry(name="a", losses=[RELATION]),
                  TeacherEntry(name="b", label="b", weight=3.0, losses=[HIDDEN])],
        losses=[SENTENCE],
    )  # fmt: skip
    student, _ = build_student(t0, [0, 3])
    student.eval()  # no dropout: forwards repeat exactly
    sg = geometry(student.config)
    terms = build_set_terms(cfg, [geometry(t0.config), geometry(t1.config)], sg)
    members = [Member("t0", t0, geometry(t0.config), cfg.teachers[0]),
               Member("b", t1, geometry(t1.config), cfg.teachers[1])]  # fmt: skip
    return members, Distiller(student, terms)


def test_per_teacher_terms_only_see_their_teacher(batch):
    t0, t1 = freeze(tiny_bert(seed=0)), freeze(tiny_bert(seed=1))
    members, distiller = _set(t0, t1)
    out = make_set_step(members, distiller)(batch)
    assert set(out.terms) == {"t0:relation@3>1/qq", "t0:relation@3>1/vv", "b:hidden_mse@2>1/mse",
                              "ensemble:sentence_mse@3>1/mse"}  # fmt: skip
    # t0's relation term equals a single-teacher run with t0 alone
    single = Distiller(
        distiller.student,
        build_terms([RELATION], geometry(t0.config), geometry(distiller.student.config)),
    )
    ref = make_step(t0, single)(batch).terms
    assert out.terms["t0:relation@3>1/qq"] == pytest.approx(ref["relation@3>1/qq"], rel=1e-6)
    # changing teacher b changes b's and the ensemble's terms, never t0's
    reinit_(t1, seed=5)
    again = make_set_step(members, distiller)(batch).terms
    assert again["t0:relation@3>1/qq"] == pytest.approx(out.terms["t0:relation@3>1/qq"], rel=1e-6)
    assert again["b:hidden_mse@2>1/mse"] != pytest.approx(out.terms["b:hidden_mse@2>1/mse"])
    assert again["ensemble:sentence_mse@3>1/mse"] != pytest.approx(
        out.terms["ensemble:sentence_mse@3>1/mse"])  # fmt: skip


def test_ensemble_feature_term_sees_the_weighted_mean(batch):
    t0, t1 = freeze(tiny_bert(seed=0)), freeze(tiny_bert(seed=1))
    members, distiller = _set(t0, t1)
    out = make_set_step(members, distiller)(batch).terms
    with torch.no_grad():
        h0 = t0(**batch).last_hidden_state
        h1 = t1(**batch).last_hidden_state
        hs = distiller.student(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    want = sentence_embedding_mse(hs, 0.25 * h0 + 0.75 * h1, mask=mask)  # weights 1 : 3
    assert out["ensemble:sentence_mse@3>1/mse"] == pytest.approx(float(want), rel=1e-5)


def test_reinit_makes_a_random_teacher():
    model = tiny_bert(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinit_(model, seed=3)
    after = model.state_dict()
    changed = [k for k in before if "weight" in k and not torch.equal(before[k], after[k])]
    assert len(changed) > 10
    again = reinit_(tiny_bert(seed=0), seed=3).state_dict()
    assert all(torch.equal(after[k], again[k]) for k in after)  # seeded


def test_teacher_set_run_on_the_sentence_task(base_overrides, teacher_dir, tmp_path):
    cfg = apply_overrides(DistillConfig(), base_overrides)
    cfg.teacher = TeacherConfig()
    cfg.teachers = [TeacherEntry(name=str(teacher_dir), losses=[RELATION]),
                    TeacherEntry(name=str(teacher_dir), label="rand", random_init=True,
                                 losses=[HIDDEN])]  # fmt: skip
    cfg.losses = [SENTENCE]
    res = run_distill(cfg, progress=False)
    assert [t["label"] for t in res["teachers"]] == ["t0", "rand"]
    assert res["teachers"][1]["random_init"] is True
    lines = [json.loads(x) for x in (tmp_path / "runs" / "tiny" / "metrics.jsonl").open()]
    logged = set().union(*(x.get("terms", {}).keys() for x in lines if x["event"] == "train"))
    assert {"t0:relation@3>1/qq", "rand:hidden_mse@2>1/mse"} <= logged


def test_teacher_set_validation_names_the_key(base_overrides, teacher_dir):
    cfg = apply_overrides(DistillConfig(), base_overrides)
    entry = TeacherEntry(name=str(teacher_dir))
    with pytest.raises(ConfigError, match=r"'teacher'.*not both"):
        validate(apply_overrides(cfg, []).__class__(**{**cfg.__dict__, "teachers": [entry]}))
    cfg.teacher = TeacherConfig()
    cfg.teachers = [entry, TeacherEntry(name=str(teacher_dir), losses=[
        LossTermConfig(name="hidden_mse", teacher_layer=9)])]  # fmt: skip
    cfg.losses = [SENTENCE]
    with pytest.raises(ConfigError, match=r"teachers\[1\]\.losses\[0\]\.teacher_layer"):
        validate(cfg, check_data=False)
    cfg.teachers = [entry, entry]
    cfg.losses = [RELATION]  # an ensemble of q/k/v is no teacher's attention
    with pytest.raises(ConfigError, match=r"losses\[0\]\.name.*teachers\[i\]\.losses"):
        validate(cfg, check_data=False)
    cfg.losses = [SENTENCE]
    cfg.teachers = [TeacherEntry(name=str(teacher_dir), label="x")] * 2
    with pytest.raises(ConfigError, match=r"teachers\[1\]\.label.*twice"):
        validate(cfg, check_data=False)
    cfg.teachers = [entry, TeacherEntry(name=str(teacher_dir), label="b", weight=-1.0)]
    with pytest.raises(ConfigError, match=r"teachers\[1\]\.weight"):
        validate(cfg, check_data=False)
    cfg.teachers = [entry]
    cfg.strategy = StrategyConfig(peer="cnn:tiny")
    with pytest.raises(ConfigError, match=r"strategy\.peer.*leave teachers empty"):
        validate(cfg, check_data=False)
    cfg.strategy = StrategyConfig(partitions=2)
    with pytest.raises(ConfigError, match=r"strategy\.partitions"):
        validate(cfg, check_data=False)
    cfg.teachers = []
    cfg.teacher = TeacherConfig(name=str(teacher_dir))
    cfg.strategy = StrategyConfig(generations=2, partitions=2)
    with pytest.raises(ConfigError, match=r"strategy\.partitions.*one or the other"):
        validate(cfg, check_data=False)
    cfg.strategy = StrategyConfig(generations=0)
    with pytest.raises(ConfigError, match=r"strategy\.generations.*>= 1"):
        validate(cfg, check_data=False)


def test_mutual_each_model_learns_from_the_others_detached_output():
    from attnkd.losses.logits import hinton_kd
    from attnkd.teachers.steps import MutualPair, make_mutual_step
    from attnkd.vision.models import build_model

    torch.manual_seed(0)
    a, b = build_model("cnn:tiny"), build_model("cnn:tiny")
    cfgs = [LossTermConfig(name="ce"), LossTermConfig(name="image_kd", temperature=2.0)]
    ga, gb = geometry(a.config), geometry(b.config)
    pair = MutualPair(a, b, build_terms(cfgs, gb, ga), build_terms(cfgs, ga, gb))
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    out = make_mutual_step(pair)({"pixel_values": x, "labels": y})
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in pair.named_parameters()}
    assert all(g.abs().sum() > 0 for n, g in got.items() if n.endswith("head.weight"))
    pair.zero_grad()
    za, zb = a(x), b(x)  # reference: each model's own loss against the other's constant output
    la = F.cross_entropy(za, y) + hinton_kd(za, zb.detach(), temperature=2.0).kd
    lb = F.cross_entropy(zb, y) + hinton_kd(zb, za.detach(), temperature=2.0).kd
    (la + lb).backward()
    for n, p in pair.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)
    # and the student's gradient is exactly that of its own loss: the peer's loss adds nothing
    pair.zero_grad()
    la2 = F.cross_entropy(a(x), y) + hinton_kd(a(x), b(x).detach(), temperature=2.0).kd
    la2.backward()
    torch.testing.assert_close(got["student.head.weight"], a.head.weight.grad)


def test_ensemble_vocabulary_term_sees_the_mean_of_probabilities():
    from attnkd.capture import Tap, Taps
    from attnkd.losses import token_divergence
    from attnkd.models.adapters import AttentionGeometry
    from attnkd.teachers import ensemble_logits
    from attnkd.teachers.set import TeacherTaps

    g = AttentionGeometry(2, 8, 2, 2, 4, causal=True, vocab_size=11)
    term = LossTermConfig(name="logits", temperature=2.0)
    cfg = DistillConfig(teachers=[TeacherEntry(name="a"), TeacherEntry(name="b", weight=2.0)],
                        losses=[term])  # fmt: skip
    (routed,) = build_set_terms(cfg, [g, g], g)
    gen = torch.Generator().manual_seed(0)
    zt = [torch.randn(2, 5, 11, generator=gen) for _ in range(2)]
    zs = torch.randn(2, 5, 11, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    t = TeacherTaps({"t0": Taps({Tap("logits", 0): zt[0]}), "t1": Taps({Tap("logits", 0): zt[1]})})
    got = routed(t, Taps({Tap("logits", 0): zs}), mask)["fkl"]
    p = (torch.softmax(zt[0] / 2, -1) + 2 * torch.softmax(zt[1] / 2, -1)) / 3
    naive = (p * (p.log() - torch.log_softmax(zs / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(got, naive)
    want = token_divergence(zs, ensemble_logits(zt, [1, 2], 2.0), temperature=2.0, mask=mask)
    torch.testing.assert_close(got, want)


def test_token_mutual_each_model_learns_from_the_others_detached_output(batch):
    from attnkd.teachers.steps import MutualPair, make_token_mutual_step

    a, b = tiny_bert(seed=0).train(), tiny_bert(seed=1).train()
    for m in (a, b):  # no dropout: the reference repeats the forwards
        m.config.hidden_dropout_prob = m.config.attention_probs_dropout_prob = 0.0
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    cfgs = [RELATION, SENTENCE]
    ga, gb = geometry(a.config), geometry(b.config)
    pair = MutualPair(a, b, build_terms(cfgs, gb, ga), build_terms(cfgs, ga, gb))
    out = make_token_mutual_step(pair)(batch)
    assert {"student/relation@3>3/qq", "peer/sentence_mse@3>3/mse"} <= set(out.terms)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in pair.named_parameters() if p.grad is not None}
    assert any(n.startswith("student.") for n in got) and any(n.startswith("peer.") for n in got)
    pair.zero_grad()
    ref = Distiller(a, pair.terms)  # the student's loss alone, the peer as a frozen teacher
    la = make_step(b, ref)(batch).loss
    la.backward()
    for n, p in a.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[f"student.{n}"], p.grad, msg=n)
    assert all(p.grad is None or not p.grad.any() for p in b.parameters())


def test_token_mutual_run_on_the_sentence_task(base_overrides, teacher_dir, tmp_path):
    cfg = apply_overrides(DistillConfig(), [*base_overrides, "teacher.name=none",
                                            f"strategy.peer={teacher_dir}"])  # fmt: skip
    cfg.losses = [RELATION, SENTENCE]
    res = run_distill(cfg, progress=False)
    assert "spearman" in res["peer"] and res["teacher"] == {"name": "none"}
    assert (tmp_path / "runs" / "tiny" / "peer" / "config.json").is_file()
