"""Classification metrics and class-logit loss terms against naive references."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from attnkd.config.schema import LossTermConfig
from attnkd.eval.classification import accuracy, binary_f1
from attnkd.losses.terms import TERMS
from attnkd.losses.terms.classification import labelled_ce
from attnkd.models.adapters import AttentionGeometry

GEO = AttentionGeometry(2, 8, 2, 2, 4)


def test_metrics_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    for _ in range(20):
        gold = [rng.randint(0, 1) for _ in range(50)]
        pred = [rng.randint(0, 1) for _ in range(50)]
        assert accuracy(pred, gold) == pytest.approx(metrics.accuracy_score(gold, pred))
        assert binary_f1(pred, gold) == pytest.approx(metrics.f1_score(gold, pred))


def test_f1_edge_cases():
    assert binary_f1([0, 0], [0, 0]) == 0.0  # no positive anywhere
    assert binary_f1([1, 1], [1, 1]) == 1.0
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])


def _term(name, **kw):
    return TERMS.get(name).cls(LossTermConfig(name=name, **kw), GEO, GEO)


def test_cls_ce_ignores_unlabelled_rows():
    torch.manual_seed(0)
    z = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, -100, 2, 1, -100, 0])
    got = _term("cls_ce")(None, z, y)["ce"]
    keep = y != -100
    assert torch.allclose(got, F.cross_entropy(z[keep], y[keep]))
    none = labelled_ce(z, torch.full((6,), -100))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(z.grad).all()


def test_cls_kd_is_tau_squared_kl_on_every_row():
    torch.manual_seed(1)
    zs, zt = torch.randn(5, 2, requires_grad=True), torch.randn(5, 2)
    y = torch.tensor([-100, 1, -100, 0, 1])  # labels do not matter to KD
    tau = 3.0
    got = _term("cls_kd", temperature=tau)(zt, zs, y)["kd"]
    pt, log_ps = F.softmax(zt / tau, -1), F.log_softmax(zs / tau, -1)
    naive = tau**2 * (pt * (pt.log() - log_ps)).sum(-1).mean()
    assert torch.allclose(got, naive, atol=1e-6)
    assert _term("cls_kd", temperature=tau)(zt, zt, y)["kd"].abs().item() < 1e-6
    got.backward()
    assert torch.isfinite(zs.grad).all()


def test_only_kd_terms_need_the_teacher():
    assert not _term("cls_ce").uses_teacher and _term("cls_kd").uses_teacher
