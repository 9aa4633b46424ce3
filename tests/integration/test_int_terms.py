"""Loss terms on a tiny teacher/student pair: taps, finite values and gradients, zero on identity,
agreement with naive formulas written here, and the shape checks that need a projector."""

from __future__ import annotations

import math

import pytest
import torch
from int_helpers import HEADS, LAYERS, WIDTH, tiny_bert

from attnkd.capture import KINDS, Capture, Tap
from attnkd.config.schema import LossTermConfig
from attnkd.losses.terms import TERMS, ClassificationTerm, VisionTerm, build_terms, collect_taps
from attnkd.models.adapters import geometry
from attnkd.models.load import freeze
from attnkd.students.build import build_student

HEADWISE = {"attention", "value_relation", "attention_mse"}


def _perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 9) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _pair(student_layers=(1, 3), perturb: bool = True, **narrow):
    teacher = freeze(tiny_bert(seed=0))
    student, _ = build_student(teacher, list(student_layers), **narrow)
    if perturb:
        _perturb(student)
    return teacher, student.eval()


def _run(term, teacher, student, batch):
    t_taps, s_taps = term.taps()
    with torch.no_grad(), Capture(teacher, t_taps) as ct:
        teacher(**batch)
    with Capture(student, s_taps) as cs:
        student(**batch)
    return term(ct.taps, cs.taps, batch["attention_mask"].bool())


def _term(name: str, teacher, student, **kw):
    cfg = LossTermConfig(name=name, **kw)
    return TERMS.get(name).cls(cfg, geometry(teacher.config), geometry(student.config))


# Terms the tiny encoders can feed ('logits' needs an LM head: see test_int_terms_lm.py; the image
# terms are tested on tiny CNNs and ViTs in tests/vision)
ENCODER_TERMS = [
    n
    for n in TERMS
    if "logits" not in TERMS.get(n).cls.teacher_kinds + TERMS.get(n).cls.student_kinds
    and not issubclass(TERMS.get(n).cls, VisionTerm)
    # class-logit terms, the student-only AEM regulariser and the contrastive dcd term (not 0
    # on identical inputs) are tested against naive references in tests/tasks; sentence_pair_rank
    # runs only on cached pair batches (test_int_mpnet_pairs.py)
    and not issubclass(TERMS.get(n).cls, ClassificationTerm)
    and n not in ("attention_entropy", "dcd", "sentence_pair_rank")
]


@pytest.mark.parametrize("name", ENCODER_TERMS)
def test_every_term_declares_taps_and_gives_finite_values_and_gradients(name, batch):
    teacher, student = _pair()
    term = _term(name, teacher, student, projector=name not in HEADWISE and name != "relation")
    assert TERMS.get(name).summary
    t_taps, s_taps = term.taps()
    assert t_taps and s_taps
    for tap in [*t_taps, *s_taps]:
        assert isinstance(tap, Tap) and tap.kind in KINDS and tap.layer >= 0
    assert {t.layer for t in s_taps} <= {0, 1}  # student_layer=-1 resolved against 2 layers
    values = _run(term, teacher, student, batch)
    assert values and all(v.dim() == 0 for v in values.values())
    total = sum(values.values())
    assert torch.isfinite(total) and total > 0, values
    total.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    for p in term.parameters():  # projectors train with the student
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert term.label == f"{name}@{term.t_layer}>{term.s_layer}"


ZERO_CASES = [(n, False) for n in ENCODER_TERMS] + [
    (n, True) for n in ENCODER_TERMS if n not in HEADWISE and n != "relation"
]


@pytest.mark.parametrize(("name", "projector"), ZERO_CASES)
def test_every_term_is_zero_when_student_equals_teacher(name, projector, batch):
    teacher, student = _pair(student_layers=range(LAYERS), perturb=False)
    term = _term(name, teacher, student, teacher_layer=2, student_layer=2, projector=projector)
    values = _run(term, teacher, student, batch)
    for key, value in values.items():
        assert abs(float(value.detach())) < 1e-5, (key, float(value.detach()))


def _naive_relation_kl(tx, ty, sx, sy, heads, mask):
    """Mean over relation heads and real rows of KL(softmax(x_r y_r^T / sqrt(d_r)) T || S)."""

    def log_rel(x, y):
        b, s, w = x.shape
        xr = x.view(b, s, heads, w // heads).transpose(1, 2).double()
        yr = y.view(b, s, heads, w // heads).transpose(1, 2).double()
        scores = xr @ yr.transpose(-1, -2) / math.sqrt(w // heads)
        return scores.masked_fill(~mask[:, None, None, :], -math.inf).log_softmax(-1)

    lt, ls = log_rel(tx, ty), log_rel(sx, sy)
    kl = torch.where(mask[:, None, None, :], lt.exp() * (lt - ls), 0.0).sum(-1)  # (B, R, S)
    rows = mask[:, None, :].expand_as(kl)
    return kl[rows].mean()


@pytest.mark.parametrize("relation_heads", [None, 2, 8])
def test_relation_term_matches_a_naive_formula(relation_heads, batch):
    teacher, student = _pair()
    term = _term("relation", teacher, student, relations=["qq", "kk", "vv", "qk"],
                 relation_heads=relation_heads, teacher_layer=2, student_layer=0)  # fmt: skip
    assert term.heads == (relation_heads or HEADS)
    values = _run(term, teacher, student, batch)
    assert set(values) == {"qq", "kk", "vv", "qk"}
    mask = batch["attention_mask"].bool()
    with torch.no_grad(), Capture(teacher, [Tap(k, 2) for k in "qkv"]) as ct:
        teacher(**batch)
    with torch.no_grad(), Capture(student, [Tap(k, 0) for k in "qkv"]) as cs:
        student(**batch)
    for rel in ("qq", "kk", "vv", "qk"):
        x, y = rel[0], rel[1]
        want = _naive_relation_kl(ct.taps.get(x, 2), ct.taps.get(y, 2), cs.taps.get(x, 0),
                                  cs.taps.get(y, 0), term.heads, mask)  # fmt: skip
        torch.testing.assert_close(values[rel].double(), want, atol=1e-6, rtol=1e-5)


def test_relation_term_with_a_narrow_student_and_other_relation_heads(batch):
    teacher, student = _pair(hidden_size=16, num_heads=2)
    for heads in (1, 4, 8, 16):  # divide 32 and 16, differ from both head counts (4, 2)
        term = _term("relation", teacher, student, relation_heads=heads)
        values = _run(term, teacher, student, batch)
        total = sum(values.values())
        assert torch.isfinite(total) and total > 0
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="width 16 is not divisible by relation_heads=32"):
        _term("relation", teacher, student, relation_heads=32)
    with pytest.raises(ValueError, match="width 32 is not divisible by relation_heads=5"):
        _term("relation", teacher, student, relation_heads=5)
    with pytest.raises(ValueError, match="unknown relations"):
        _term("relation", teacher, student, relations=["qv"])


def test_attention_term_equals_kl_of_the_model_attention_probabilities(batch):
    """q/k-built attention equals what an eager model itself returns as attention weights."""
    teacher = freeze(tiny_bert(seed=0, attn="eager"))
    student, _ = build_student(teacher, [0, 2], attn_implementation="eager")
    _perturb(student)
    student.eval()
    term = _term("attention", teacher, student, teacher_layer=3, student_layer=1)
    value = _run(term, teacher, student, batch)["at"]
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        at = teacher(**batch, output_attentions=True).attentions[3].double()
        as_ = student(**batch, output_attentions=True).attentions[1].double()
    keys = mask[:, None, None, :]
    kl = torch.where(keys, at * (at.clamp_min(1e-300).log() - as_.clamp_min(1e-300).log()), 0.0)
    want = kl.sum(-1)[mask[:, None, :].expand(-1, HEADS, -1)].mean()
    torch.testing.assert_close(value.double(), want, atol=1e-6, rtol=1e-5)


def test_headwise_terms_need_equal_head_counts(batch):
    teacher, student = _pair(num_heads=2)
    for name in sorted(HEADWISE):
        with pytest.raises(ValueError, match="needs equal head counts.*'relation'"):
            _term(name, teacher, student)


@pytest.mark.parametrize("name", ["hidden_mse", "hidden_cosine", "embedding_mse", "sentence_mse"])
def test_feature_terms_need_a_projector_when_widths_differ(name, batch):
    teacher, student = _pair(hidden_size=16, num_heads=2)
    with pytest.raises(ValueError, match="student width 16 != teacher width 32: set projector"):
        _term(name, teacher, student)
    term = _term(name, teacher, student, projector=True)
    assert term.projector is not None
    values = _run(term, teacher, student, batch)
    sum(values.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.projector.parameters())


def test_hidden_mse_matches_a_naive_masked_mean(batch):
    teacher, student = _pair()
    term = _term("hidden_mse", teacher, student, teacher_layer=3, student_layer=1)
    value = _run(term, teacher, student, batch)["mse"]
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ht = teacher(**batch)[0]
        hs = student(**batch)[0]
    want = ((hs - ht) ** 2)[mask].mean()
    torch.testing.assert_close(value, want, atol=1e-6, rtol=1e-5)


def test_layer_out_of_range_fails_when_the_term_is_built():
    teacher, student = _pair()
    with pytest.raises(IndexError, match="student_layer index 2 out of range"):
        _term("relation", teacher, student, student_layer=2)
    with pytest.raises(IndexError, match="teacher_layer index -5 out of range"):
        _term("hidden_mse", teacher, student, teacher_layer=-5)


def test_build_terms_and_collect_taps_take_the_union():
    teacher, student = _pair()
    cfgs = [
        LossTermConfig(name="relation", relations=["qq", "vv"], teacher_layer=-1),
        LossTermConfig(name="hidden_mse", teacher_layer=1, student_layer=0),
        LossTermConfig(name="attention", teacher_layer=3, student_layer=1),
        LossTermConfig(name="embedding_mse"),
    ]
    terms = build_terms(cfgs, geometry(teacher.config), geometry(student.config))
    assert [t.kind for t in terms] == ["relation", "hidden_mse", "attention", "embedding_mse"]
    t_taps, s_taps = collect_taps(terms)
    assert t_taps == [Tap("embeddings", 0), Tap("hidden", 1), Tap("k", 3), Tap("q", 3), Tap("v", 3)]
    assert s_taps == [Tap("embeddings", 0), Tap("hidden", 0), Tap("k", 1), Tap("q", 1), Tap("v", 1)]
    assert geometry(student.config).hidden_size == WIDTH
