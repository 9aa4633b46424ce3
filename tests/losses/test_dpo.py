"""DPO loss against hand-computed values; sequence log-probs against an explicit loop."""

from __future__ import annotations

import math

import pytest
import torch

from attnkd.losses.dpo import dpo_loss, sequence_logprobs


def test_dpo_hand_computed():
    # pair 1: r_w = 0.5 * (-3 - -4) = 0.5, r_l = 0.5 * (-6 - -5) = -0.5, margin 1
    # pair 2: r_w = 0.5 * (-2 - -1) = -0.5, r_l = 0.5 * (-2 - -3) = 0.5, margin -1
    # loss = mean(-log sigma(1), -log sigma(-1)) = mean(log(1 + e^-1), log(1 + e))
    pc = torch.tensor([-3.0, -2.0], requires_grad=True)
    pr = torch.tensor([-6.0, -2.0], requires_grad=True)
    rc, rr = torch.tensor([-4.0, -1.0]), torch.tensor([-5.0, -3.0])
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    assert out.chosen_reward.tolist() == pytest.approx([0.5, -0.5])
    assert out.rejected_reward.tolist() == pytest.approx([-0.5, 0.5])
    assert out.accuracy == 0.5
    out.loss.backward()
    # d/dpc of softplus(-beta*(pc - pr ...)) / 2 = -beta * sigma(-margin) / 2
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert pc.grad.tolist() == pytest.approx([-0.5 * s(-1) / 2, -0.5 * s(1) / 2], rel=1e-6)
    assert pr.grad.tolist() == pytest.approx([0.5 * s(-1) / 2, 0.5 * s(1) / 2], rel=1e-6)


def test_dpo_zero_margin_is_log2_and_large_margin_stable():
    z = torch.zeros(3)
    assert dpo_loss(z, z, z, z, beta=0.1).loss.item() == pytest.approx(math.log(2))
    big = torch.tensor([1e4])
    out = dpo_loss(big, -big, torch.zeros(1), torch.zeros(1), beta=1.0)
    assert out.loss.item() == 0.0 and math.isfinite(out.loss.item())
    out = dpo_loss(-big, big, torch.zeros(1), torch.zeros(1), beta=1.0)
    assert out.loss.item() == pytest.approx(2e4)


def test_dpo_rejects_bad_input():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(z, z, z, z, beta=0.0)
    with pytest.raises(ValueError, match="pairs"):
        dpo_loss(z, torch.zeros(3), z, z)


def test_sequence_logprobs_explicit_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    resp = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    got = sequence_logprobs(logits, ids, resp)
    want = []
    for b in range(2):
        total = 0.0
        for t in range(1, 5):
            if resp[b, t]:
                total += torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]].item()
        want.append(total)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    got.sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, -1] == 0).all()
