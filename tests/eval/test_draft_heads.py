"""Shortlist training heads, teacher-forced acceptance (α) and the next-token CE baseline, on
tiny random Llama / GPT-2 models built here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkd.eval.draft_alpha import AlphaProbe
from attnkd.eval.drafts import (
    SubsetHead,
    shortlist_targets,
    token_shortlist,
    with_shortlist,
    with_subset_head,
)
from attnkd.eval.spec_cost import acceptance_from_logits, teacher_forced_acceptance
from attnkd.losses.next_token import next_token_ce
from tiny_lms import single_thread, tiny_gpt2, tiny_llama

V = 13


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def llama(seed: int, layers: int = 2):
    return tiny_llama(seed, V, layers).eval()


def gpt2(seed: int, layers: int = 2):
    return tiny_gpt2(seed, V, layers).eval()


SHORT = torch.tensor([0, 2, 3, 7, 11])


@pytest.mark.parametrize("make", [llama, gpt2])
def test_subset_head_gives_the_shortlist_columns_of_the_full_head(make):
    model = make(0)
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    full = model(input_ids=ids).logits
    sub = with_subset_head(model, SHORT)
    assert isinstance(sub.lm_head, SubsetHead) and not isinstance(model.lm_head, SubsetHead)
    z = sub(input_ids=ids).logits
    assert z.shape == (2, 9, len(SHORT))
    torch.testing.assert_close(z, full[..., SHORT], rtol=1e-5, atol=1e-5)
    # the decoding head (full width, -inf off the list) softmaxes to the subset head's softmax
    zs = with_shortlist(model, SHORT)(input_ids=ids).logits
    torch.testing.assert_close(torch.softmax(zs, -1)[..., SHORT], torch.softmax(z, -1))
    assert torch.softmax(zs, -1)[..., [1, 4]].abs().max() == 0


def test_shortlist_targets_map_ids_to_columns_and_ignore_the_rest():
    ids = torch.tensor([[0, 1, 7], [11, 12, 3]])
    want = torch.tensor([[0, -100, 3], [4, -100, 2]])
    assert torch.equal(shortlist_targets(ids, SHORT, V), want)
    # cross-entropy over the subset == CE on the full vocabulary restricted and renormalised
    z = torch.randn(6, len(SHORT))
    y = shortlist_targets(ids.reshape(-1), SHORT, V)
    naive = torch.stack([-torch.log_softmax(z[i], -1)[y[i]] for i in range(6) if y[i] >= 0])
    torch.testing.assert_close(F.cross_entropy(z, y, ignore_index=-100), naive.mean())


def test_acceptance_from_logits_is_one_minus_tvd_and_argmax_agreement():
    g = torch.Generator().manual_seed(3)
    zt, zd = torch.randn(7, V, generator=g), torch.randn(7, V, generator=g)
    a = acceptance_from_logits(zt, zd)
    p, q = torch.softmax(zt, -1), torch.softmax(zd, -1)
    tvd = [0.5 * sum(abs(float(p[i, x] - q[i, x])) for x in range(V)) for i in range(7)]
    assert a.count == 7
    assert a.alpha == pytest.approx(1 - sum(tvd) / 7, abs=1e-6)
    assert a.alpha_greedy == pytest.approx(float((zt.argmax(-1) == zd.argmax(-1)).float().mean()))
    same = acceptance_from_logits(zt, zt.clone())
    assert same.alpha == pytest.approx(1.0) and same.alpha_greedy == 1.0
    # a shortlist draft's -inf entries get probability 0 (no NaN)
    zd[:, 5] = float("-inf")
    assert 0.0 < acceptance_from_logits(zt, zd).alpha < 1.0


def test_alpha_probe_matches_teacher_forced_acceptance_and_restores_modes():
    teacher, draft = llama(0, layers=3), llama(1, layers=1)
    blocks = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(4))
    draft.train()
    probe = AlphaProbe(teacher, blocks)
    got = probe(draft)
    assert draft.training and all(m.training for m in draft.modules())
    assert got["alpha"] == pytest.approx(
        teacher_forced_acceptance(teacher, draft, blocks), abs=1e-6
    )
    assert 0.0 <= got["alpha_greedy"] <= 1.0
    assert probe(teacher) == {"alpha": pytest.approx(1.0), "alpha_greedy": 1.0}


def test_token_shortlist_keeps_the_most_frequent_ids_and_always():
    ids = [5, 5, 5, 2, 2, 9, 1]
    assert token_shortlist(ids, 2, V, always=[12]).tolist() == [2, 5, 12]


def test_next_token_ce_against_a_hand_loop_with_mask():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, V, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    got = next_token_ce(z, ids, mask)
    terms = [-torch.log_softmax(z[b, t], -1)[ids[b, t + 1]]
             for b in range(2) for t in range(4) if mask[b, t] and mask[b, t + 1]]  # fmt: skip
    assert len(terms) == 6
    torch.testing.assert_close(got, torch.stack(terms).mean())
    got.backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad[1, 2:].abs().max() == 0  # a masked target and masked rows give no gradient
    assert next_token_ce(z, ids).item() == pytest.approx(
        F.cross_entropy(z[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)).item()
    )
    with pytest.raises(ValueError, match="must agree"):
        next_token_ce(z, ids[:, :3])


@pytest.mark.parametrize("make", [llama, gpt2])
def test_lm_ce_term_reads_the_input_ids_tap(make):
    from attnkd.capture import Capture, Tap
    from attnkd.config.schema import LossTermConfig
    from attnkd.losses.terms import build_terms, collect_taps
    from attnkd.models.adapters import geometry

    model = make(0)
    g = geometry(model.config)
    terms = build_terms([LossTermConfig(name="lm_ce")], g, g)
    t_taps, s_taps = collect_taps(terms)
    assert t_taps == [] and Tap("input_ids", 0) in s_taps
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 7, dtype=torch.bool)
    with Capture(model, s_taps) as cap:
        logits = model(input_ids=ids).logits
    assert torch.equal(cap.taps.get("input_ids"), ids)
    got = terms[0](None, cap.taps, mask)["ce"]
    torch.testing.assert_close(got, next_token_ce(logits, ids))
