"""On-policy rows (GKD / DistillSpec) on tiny random Llama and GPT-2 models: λ is respected,
prefixes and data rows are kept, samples follow the student, no gradient flows through
sampling, the teacher scores the generated tokens in the distillation step, batches are
reproducible from (seed, epoch, index)."""

from __future__ import annotations

import pytest
import torch

from attnkd.data.lm import LMBatches
from attnkd.data.onpolicy import (
    OnPolicyBatches,
    mix_on_policy,
    on_policy_rows,
    sample_continuations,
)
from attnkd.errors import ConfigError
from tiny_lms import single_thread, tiny_gpt2, tiny_llama

V = 11


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def llama(seed: int, layers: int = 2):
    return tiny_llama(seed, V, layers)


def gpt2(seed: int, layers: int = 2):
    return tiny_gpt2(seed, V, layers)


def data(b: int = 8, length: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (b, length), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize(("b", "lam", "want"), [(8, 0.0, 0), (8, 0.25, 2), (8, 0.5, 4),
                                                (8, 1.0, 8), (4, 0.1, 1), (3, 0.5, 2)])  # fmt: skip
def test_lambda_gives_the_number_of_generated_rows(b, lam, want):
    assert on_policy_rows(b, lam) == want
    student = llama(0)
    out = mix_on_policy(data(b), student, lam, prefix=4, generator=torch.Generator().manual_seed(0))
    assert int(out.rows.sum()) == want
    assert out.generated_tokens == want * (12 - 4)


def test_bad_lambda_and_prefix_are_config_errors():
    with pytest.raises(ConfigError, match="data.on_policy"):
        on_policy_rows(4, 1.5)
    with pytest.raises(ConfigError, match="on_policy_prefix"):
        mix_on_policy(data(), llama(0), 0.5, prefix=12)


@pytest.mark.parametrize("make", [llama, gpt2])
def test_generated_rows_keep_their_prefix_and_other_rows_are_untouched(make):
    student = make(0)
    x = data()
    out = mix_on_policy(x, student, 0.5, prefix=5, generator=torch.Generator().manual_seed(1))
    r = out.rows
    assert torch.equal(out.input_ids[~r], x[~r])
    assert torch.equal(out.input_ids[r, :5], x[r, :5])
    assert not torch.equal(out.input_ids[r, 5:], x[r, 5:])  # 28 random tokens all equal: ~0
    assert out.input_ids.dtype == torch.int64 and out.seconds > 0


@pytest.mark.parametrize("make", [llama, gpt2])
def test_samples_follow_the_student_distribution(make):
    """Greedy sampling equals the argmax path computed without a cache; at temperature 1 the
    first sampled token's frequencies match the student's next-token distribution."""
    student = make(1).eval()
    prefix = data(2, 4)
    got = sample_continuations(student, prefix, 5, temperature=0)
    seq = prefix.clone()
    for _ in range(5):
        nxt = student(input_ids=seq).logits[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(got, seq[:, 4:])
    one = prefix[:1].repeat(4000, 1)
    draws = sample_continuations(student, one, 1, 1.0, torch.Generator().manual_seed(2))[:, 0]
    freq = torch.bincount(draws, minlength=V).float() / 4000
    p = torch.softmax(student(input_ids=prefix[:1]).logits[0, -1], -1)
    assert (freq - p).abs().max() < 0.04  # 4000 draws: sd <= 0.008


def test_no_gradient_flows_through_sampling():
    student = llama(2).train()
    x = data()
    out = mix_on_policy(x, student, 0.5, prefix=4, generator=torch.Generator().manual_seed(3))
    assert out.input_ids.grad_fn is None and not out.input_ids.requires_grad
    assert all(p.grad is None for p in student.parameters())
    assert student.training  # mode restored after generating in eval mode
    loss = student(input_ids=out.input_ids).logits.logsumexp(-1).mean()
    loss.backward()  # the step's gradient comes from the student's forward on the ids only
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_batches_are_reproducible_and_the_teacher_scores_generated_tokens():
    """The distillation step runs the teacher on the mixed batch: the ids it sees are the
    student's generated rows; the same (epoch, index) regenerates the same batch."""
    from attnkd.config.schema import LossTermConfig
    from attnkd.distill import Distiller, make_step
    from attnkd.losses.terms import build_terms
    from attnkd.models.adapters import geometry

    teacher, student = llama(5, layers=3).eval(), llama(6)
    blocks = data(16, 12)
    inner = LMBatches(blocks, 4, seed=0)
    batches = OnPolicyBatches(inner, student, 0.5, prefix=3, seed=0)
    a, b = batches.batch_at(0, 1), batches.batch_at(0, 1)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert batches.rows == 4 and batches.tokens == 4 * 9 and batches.seconds > 0
    data_rows = inner.batch_at(0, 1)["input_ids"]
    changed = (a["input_ids"] != data_rows).any(1)
    assert 1 <= int(changed.sum()) <= 2

    seen = []
    teacher.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["input_ids"].clone()),
                                      with_kwargs=True)  # fmt: skip
    terms = build_terms([LossTermConfig(name="logits", kind="tvd")], geometry(teacher.config),
                        geometry(student.config))  # fmt: skip
    distiller = Distiller(student, terms)
    out = make_step(teacher, distiller)(a)
    assert len(seen) == 1 and torch.equal(seen[0], a["input_ids"])
    assert torch.isfinite(out.loss) and out.loss.requires_grad


def test_on_policy_with_an_offline_teacher_cache_is_refused():
    """Cached targets exist for the fixed text only; generated rows need the live teacher."""
    from attnkd.config.schema import DistillConfig
    from attnkd.validate import validate_static

    cfg = DistillConfig(task="causal_lm")
    cfg.data.on_policy = 0.25
    cfg.teacher.cache = "runs/some-cache"
    with pytest.raises(ConfigError, match="data.on_policy.*live teacher"):
        validate_static(cfg)


def test_alpha_selection_with_an_offline_teacher_cache_is_refused():
    from attnkd.config.schema import DistillConfig
    from attnkd.validate import validate_static

    cfg = DistillConfig(task="causal_lm")
    cfg.train.select_metric = "alpha"
    cfg.teacher.cache = "runs/some-cache"
    with pytest.raises(ConfigError, match="train.select_metric.*live teacher"):
        validate_static(cfg)
