"""AEM attention entropy and OFA-KD target enhancement against naive per-element references;
SSLD: unlabeled sentences join training with no label and never hold a held-out sentence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkd.config.schema import LossTermConfig
from attnkd.losses.cls_losses import attention_entropy, ofa_target_loss
from attnkd.losses.terms import TERMS
from attnkd.models.adapters import AttentionGeometry


def _naive_entropy(q, k, mask):
    b, h, s, d = q.shape
    out = torch.zeros(b, h)
    for i in range(b):
        real = [j for j in range(s) if mask[i, j]]
        for a in range(h):
            total = 0.0
            for r in real:
                sc = torch.stack([q[i, a, r] @ k[i, a, c] / math.sqrt(d) for c in real])
                p = torch.softmax(sc, 0)
                total += float(-(p * p.log()).sum())
            out[i, a] = total / len(real)
    return out


def test_attention_entropy_matches_naive_and_ignores_padding():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = attention_entropy(q, k, mask)
    assert torch.allclose(got, _naive_entropy(q, k, mask), atol=1e-5)
    q2 = q.clone()
    q2[0, :, 3:] = 1e4  # padded rows and keys hold garbage: no effect
    k2 = k.clone()
    k2[0, :, 3:] = float("nan")
    assert torch.allclose(attention_entropy(q2, k2, mask)[0], got[0], atol=1e-5)
    uniform = attention_entropy(torch.zeros(1, 3, 5, 4), k[:1], mask[:1])
    assert torch.allclose(uniform, torch.full((1, 3), math.log(3)), atol=1e-6)


def test_attention_entropy_term_pushes_entropy_up():
    g = AttentionGeometry(1, 8, 2, 2, 4)
    term = TERMS.get("attention_entropy").cls(LossTermConfig(name="attention_entropy"), g, g)
    assert term.taps()[0] == [] and {t.kind for t in term.taps()[1]} == {"q", "k"}
    from attnkd.capture import Tap, Taps

    torch.manual_seed(1)
    q = torch.randn(2, 6, 8, requires_grad=True)
    k = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    loss = term(None, Taps({Tap("q", 0): q, Tap("k", 0): k}), mask)["neg_entropy"]
    loss.backward()
    with torch.no_grad():  # a small step against the gradient raises the entropy
        q2 = q - 0.1 * q.grad

    def s(x):
        heads = lambda t: t.view(2, 6, 2, 4).transpose(1, 2)  # noqa: E731
        return attention_entropy(heads(x), heads(k), mask).mean()

    assert s(q2) > s(q.detach())


def _naive_ofa(zs, zt, y, eps, tau):
    total = 0.0
    for i in range(zs.shape[0]):
        pt = torch.softmax(zt[i] / tau, 0)
        lps = torch.log_softmax(zs[i] / tau, 0)
        for c in range(zs.shape[1]):
            target = 1.0 if int(y[i]) == c else 0.0
            w = (float(pt[c]) + target) ** eps - target
            total -= w * float(lps[c])
    return total / zs.shape[0]


@pytest.mark.parametrize("eps", [1.0, 1.5])
def test_ofa_target_loss_matches_naive(eps):
    torch.manual_seed(2)
    zs, zt = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 2, -100, 1, 1, 0])
    got = ofa_target_loss(zs, zt, y, eps=eps, temperature=2.0)
    assert got.item() == pytest.approx(_naive_ofa(zs, zt, y, eps, 2.0), rel=1e-5)


def test_ofa_with_eps_one_is_soft_cross_entropy_and_enhances_the_target_above():
    torch.manual_seed(3)
    zs = torch.randn(4, 2, requires_grad=True)
    zt, y = torch.randn(4, 2), torch.tensor([1, 0, 1, 1])
    soft_ce = -(F.softmax(zt, -1) * F.log_softmax(zs, -1)).sum(-1).mean()
    assert torch.allclose(ofa_target_loss(zs, zt, y, eps=1.0), soft_ce, atol=1e-6)
    g1 = torch.autograd.grad(ofa_target_loss(zs, zt, y, eps=1.0), zs)[0]
    g2 = torch.autograd.grad(ofa_target_loss(zs, zt, y, eps=1.6), zs)[0]
    rows = torch.arange(4)
    assert (g2[rows, y] < g1[rows, y]).all()  # a stronger push up on the true class


def test_unlabeled_sentences_join_with_no_label_and_no_held_out_sentence(
    cls_data, tmp_path, monkeypatch
):
    from attnkd.config.schema import DistillConfig
    from attnkd.data import cls_splits as cs
    from attnkd.tasks.sequence_classification import task_splits, unlabeled_examples

    monkeypatch.setattr(cs, "SST2_HELDOUT", 10)
    cfg = DistillConfig(task="sequence_classification")
    cfg.data.data_dir = str(cls_data)
    cfg.data.eval_task, cfg.data.select_task = "sst2:heldout", "sst2:val"
    cfg.train.seed = 7
    splits = task_splits(cfg)
    held = [splits.eval[0].text, splits.select[0].text]
    extra = tmp_path / "extra.txt"
    extra.write_text(
        "\n".join(
            [
                *held,
                "the old horse is sitting in the field .",
                "a blue bird is jumping in the water .",
            ]
        )
        + "\n"
    )
    cfg.data.unlabeled_sources = [f"file:{extra}"]
    rows = unlabeled_examples(cfg, splits, pairs=False)
    assert sorted(r.text for r in rows) == [
        "a blue bird is jumping in the water .",
        "the old horse is sitting in the field .",
    ]
    assert all(r.label == -100 for r in rows)


def _naive_dcd(s, t, k, tau):
    s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    total = 0.0
    for i in range(s.shape[0]):
        others = sorted((j for j in range(s.shape[0]) if j != i), key=lambda j: -float(t[i] @ t[j]))
        cand = [i, *others[:k]]
        logits = torch.stack([s[i] @ t[j] for j in cand]) / tau
        total -= float(torch.log_softmax(logits, 0)[0])
    return total / s.shape[0]


def test_hard_negative_contrastive_matches_naive_and_mines_with_the_teacher():
    from attnkd.losses.cls_losses import hard_negative_contrastive

    torch.manual_seed(4)
    s, t = torch.randn(7, 5), torch.randn(7, 5)
    got = hard_negative_contrastive(s, t, negatives=3, temperature=0.1)
    assert got.item() == pytest.approx(_naive_dcd(s, t, 3, 0.1), rel=1e-5)
    # capped at batch - 1 negatives: with all of them it is InfoNCE over the whole batch
    full = hard_negative_contrastive(s, t, negatives=50, temperature=0.1)
    logits = F.normalize(s, dim=-1) @ F.normalize(t, dim=-1).T / 0.1
    assert full.item() == pytest.approx(F.cross_entropy(logits, torch.arange(7)).item(), rel=1e-5)
    x = torch.randn(4, 5, requires_grad=True)
    loss = hard_negative_contrastive(x, torch.randn(4, 5), negatives=2)
    loss.backward()
    assert torch.isfinite(x.grad).all()
