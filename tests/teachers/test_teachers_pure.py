"""The pure parts of the teacher strategies, each against a naive form or on its defining
property: ensemble targets, ground-truth mixing, multi-exit, partitions, compatibility rules."""

import pytest
import torch
import torch.nn.functional as F

from attnkd.errors import ConfigError
from attnkd.losses.logits import hinton_kd
from attnkd.teachers import (
    ensemble_logits,
    ensemble_mean,
    ensemble_probs,
    exit_kd,
    mixed_kd,
    mixed_targets,
    normalise_weights,
    partition_indices,
    soft_cross_entropy,
)
from attnkd.teachers.compat import (
    allowed_with_other_tokenizer,
    check_ensemble_term,
    check_tokenizer_compat,
)


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ensemble_target_is_mean_of_teacher_probabilities():
    z = [_logits(5, 7, seed=i) * 3 for i in range(3)]
    want = sum(torch.softmax(x, -1) for x in z) / 3
    torch.testing.assert_close(ensemble_probs(z), want)
    torch.testing.assert_close(ensemble_probs(z).sum(-1), torch.ones(5, dtype=torch.float64))
    # not the softmax of the mean logits
    assert not torch.allclose(ensemble_probs(z), torch.softmax(sum(z) / 3, -1))


def test_weighted_ensemble_and_weights_are_normalised():
    z = [_logits(4, 6, seed=i) for i in range(2)]
    want = 0.75 * torch.softmax(z[0], -1) + 0.25 * torch.softmax(z[1], -1)
    torch.testing.assert_close(ensemble_probs(z, [3.0, 1.0]), want)
    assert normalise_weights([2, 2], 2) == [0.5, 0.5]
    for bad in ([-1.0, 2.0], [0.0, 0.0], [1.0]):
        with pytest.raises(ValueError):
            normalise_weights(bad, 2)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_ensemble_logits_give_the_tempered_mean_to_a_logit_loss(tau):
    z = [_logits(6, 5, seed=i) * 2 for i in range(2)]
    zbar = ensemble_logits(z, [1.0, 2.0], temperature=tau)
    p = (torch.softmax(z[0] / tau, -1) + 2 * torch.softmax(z[1] / tau, -1)) / 3
    torch.testing.assert_close(torch.softmax(zbar / tau, -1), p)
    zs = _logits(6, 5, seed=9)
    naive = (p * (p.log() - torch.log_softmax(zs / tau, -1))).sum(-1).mean() * tau**2
    torch.testing.assert_close(hinton_kd(zs, zbar, temperature=tau).kd, naive)


def test_ensemble_mean_of_features():
    x = [_logits(2, 3, 4, seed=i) for i in range(3)]
    torch.testing.assert_close(ensemble_mean(x, [1, 1, 2]), (x[0] + x[1] + 2 * x[2]) / 4)
    with pytest.raises(ValueError, match="teacher 1's features has shape"):
        ensemble_mean([x[0], x[1][:, :2]])


@pytest.mark.parametrize("xi", [0.0, 0.3, 1.0])
def test_ground_truth_mixing_weight_is_respected(xi):
    zt, y = _logits(8, 5, seed=1).float(), torch.arange(8) % 5
    q = mixed_targets(zt, y, xi, temperature=2.0)
    want = xi * F.one_hot(y, 5).float() + (1 - xi) * torch.softmax(zt / 2.0, -1)
    torch.testing.assert_close(q, want)
    torch.testing.assert_close(q.sum(-1), torch.ones(8))
    # the student's gradient is (softmax(z_S/τ) − q)·τ/B: zero exactly at the target
    zs = _logits(8, 5, seed=2).float().requires_grad_()
    r = mixed_kd(zs, zt, y, xi, temperature=2.0)
    (g,) = torch.autograd.grad(r.loss, zs)
    torch.testing.assert_close(g, (torch.softmax(zs.detach() / 2, -1) - want) * 2.0 / 8)
    with pytest.raises(ValueError, match="gt_weight"):
        mixed_targets(zt, y, 1.5)


def test_soft_cross_entropy_with_one_hot_target_is_cross_entropy():
    zs, y = _logits(6, 4, seed=3).float(), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(soft_cross_entropy(zs, F.one_hot(y, 4).float()),
                               F.cross_entropy(zs, y))  # fmt: skip


def test_exit_is_trained_towards_the_final_exit_which_gets_no_gradient():
    exit_logits = _logits(6, 5, seed=4).float().requires_grad_()
    final = _logits(6, 5, seed=5).float().requires_grad_()
    y = torch.arange(6) % 5
    r = exit_kd(exit_logits, final, y, temperature=3.0, ce_weight=0.5)
    r.total.backward()
    assert final.grad is None  # the deeper exit teaches and is not pulled towards the shallow one
    p = torch.softmax(final.detach() / 3, -1)
    kd = (p * (p.log() - torch.log_softmax(exit_logits.detach() / 3, -1))).sum(-1).mean() * 9
    torch.testing.assert_close(r.kd, kd)
    torch.testing.assert_close(r.total, kd + 0.5 * F.cross_entropy(exit_logits.detach(), y))
    same = exit_kd(final.detach(), final.detach(), y, ce_weight=0.0)
    assert float(same.total) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("n", "parts"), [(10, 3), (7, 7), (100, 1)])
def test_partitions_are_disjoint_and_covering(n, parts):
    idx = partition_indices(n, parts, seed=1)
    assert len(idx) == parts
    allv = torch.cat(idx)
    assert sorted(allv.tolist()) == list(range(n))  # covering, no repeats: disjoint
    sizes = [len(i) for i in idx]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.equal(a, b) for a, b in zip(idx, partition_indices(n, parts, 1), strict=True))
    with pytest.raises(ValueError):
        partition_indices(2, 3)


def test_different_tokenizer_teacher_refuses_token_and_vocabulary_terms():
    names = ["sentence_mse", "relation"]
    keys = ["teachers[1].losses[0].name", "teachers[1].losses[1].name"]
    with pytest.raises(ConfigError) as err:
        check_tokenizer_compat("mpnet", names, keys, same_tokenizer=False)
    assert err.value.key == "teachers[1].losses[1].name"
    assert "teacher 'mpnet'" in str(err.value) and "loss 'relation'" in str(err.value)
    for term in ("hidden_mse", "attention", "embedding_mse", "logits"):
        with pytest.raises(ConfigError, match=f"loss '{term}'"):
            check_tokenizer_compat("m", [term], ["k"], same_tokenizer=False)
    check_tokenizer_compat("m", ["sentence_mse", "sentence_cosine"], ["a", "b"], False)
    check_tokenizer_compat("m", ["relation", "logits"], ["a", "b"], True)  # same tokenizer
    assert {"sentence_mse", "sentence_cosine"} <= set(allowed_with_other_tokenizer())
    assert "relation" not in allowed_with_other_tokenizer()


def test_ensemble_terms_must_read_averageable_taps():
    check_ensemble_term("image_kd", ("logits",), "losses[0].name")
    check_ensemble_term("sentence_mse", ("hidden",), "losses[0].name")
    with pytest.raises(ConfigError, match=r"losses\[2\]\.name.*mean of q/k/v"):
        check_ensemble_term("relation", ("q", "k", "v"), "losses[2].name")
