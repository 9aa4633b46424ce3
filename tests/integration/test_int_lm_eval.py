"""Perplexity of causal LMs on token blocks: a naive per-prefix loop, golden values of models
whose predictions are known, eval mode and no_grad inside, every module's mode restored."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from attnkd.errors import AttnkdError
from attnkd.eval.perplexity import PerplexityResult, perplexity

VOCAB = 61


def tiny_llama(seed: int = 0, **kw):
    """A random tiny LlamaForCausalLM: width 32, 2 layers, 4 query heads, 2 kv heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    base.update(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base.update(kw)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**base)).eval()


def _blocks(n: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, length), generator=g)


def _naive_nll(model, blocks: torch.Tensor) -> tuple[float, int]:
    """Sum of -log p(x[t+1] | x[:t+1]): the model run on each prefix alone, float64 softmax."""
    total, count = 0.0, 0
    with torch.no_grad():
        for block in blocks:
            for t in range(len(block) - 1):
                logits = model(input_ids=block[None, : t + 1]).logits[0, -1].double()
                total -= float(torch.log_softmax(logits, -1)[block[t + 1]])
                count += 1
    return total, count


class _Recorder(nn.Module):
    """Logits chosen by ``fn(ids)``; records the mode and grad state seen in forward."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, input_ids, attention_mask):
        assert torch.equal(attention_mask, torch.ones_like(input_ids))
        self.seen.append((self.training, torch.is_grad_enabled()))
        return SimpleNamespace(logits=self.fn(input_ids) * self.scale)


def test_perplexity_equals_a_naive_prefix_loop():
    model = tiny_llama()
    blocks = _blocks(5, 9)
    total, count = _naive_nll(model, blocks)
    for batch_size in (1, 2, 8):  # 2 leaves a smaller last batch
        res = perplexity(model, blocks, batch_size=batch_size)
        assert isinstance(res, PerplexityResult)
        assert res.tokens == count == 5 * 8
        assert res.nll == pytest.approx(total / count, rel=1e-6)
        assert res.ppl == pytest.approx(math.exp(total / count), rel=1e-6)
    assert 1.0 < res.ppl < 10 * VOCAB  # a random model: about uniform


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_uniform_model_has_perplexity_equal_to_the_vocabulary(dtype, rel):
    vocab = 37
    model = _Recorder(lambda ids: torch.zeros(*ids.shape, vocab, dtype=dtype)).to(dtype)
    res = perplexity(model, torch.randint(0, vocab, (7, 6)), batch_size=3)
    assert res.ppl == pytest.approx(vocab, rel=rel)
    assert res.nll == pytest.approx(math.log(vocab), rel=rel)
    assert res.tokens == 7 * 5


def test_golden_value_of_a_model_that_knows_the_next_token():
    """Logit c on (x + 1) % V, 0 elsewhere; blocks follow x -> x + 1, so every prediction has
    p = e^c / (e^c + V - 1); the first token of each block is never scored."""
    vocab, c = 10, 2.0

    def next_token_logits(ids):
        return c * nn.functional.one_hot((ids + 1) % vocab, vocab).float()

    starts = torch.tensor([0, 4, 9])
    blocks = (starts[:, None] + torch.arange(6)) % vocab
    res = perplexity(_Recorder(next_token_logits), blocks, batch_size=2)
    p = math.exp(c) / (math.exp(c) + vocab - 1)
    assert res.nll == pytest.approx(-math.log(p), rel=1e-6)
    assert res.ppl == pytest.approx(1 / p, rel=1e-6)
    blocks[:, 0] = (blocks[:, 1] + 4) % vocab  # position 0 now predicts position 1 wrongly
    wrong = perplexity(_Recorder(next_token_logits), blocks)
    q = 1 / (math.exp(c) + vocab - 1)
    assert wrong.tokens == res.tokens == 3 * 5
    assert wrong.nll == pytest.approx((12 * -math.log(p) + 3 * -math.log(q)) / 15, rel=1e-6)


def test_runs_in_eval_mode_without_grad_and_restores_every_mode():
    model = _Recorder(lambda ids: torch.zeros(*ids.shape, 5))
    model.train()
    perplexity(model, torch.zeros(4, 3, dtype=torch.long), batch_size=2)
    assert model.seen == [(False, False), (False, False)]
    assert model.training

    llama = tiny_llama(attention_dropout=0.5)
    blocks = _blocks(3, 7)
    want = perplexity(llama, blocks).nll
    llama.train()
    llama.model.layers[0].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in llama.named_modules()}
    assert perplexity(llama, blocks).nll == pytest.approx(want, rel=1e-9)  # no dropout
    assert {name: m.training for name, m in llama.named_modules()} == before
    assert all(p.grad is None for p in llama.parameters())


def test_restores_the_mode_when_the_model_fails():
    def boom(ids):
        raise RuntimeError("boom")

    model = _Recorder(boom).train()
    with pytest.raises(RuntimeError, match="boom"):
        perplexity(model, torch.zeros(2, 3, dtype=torch.long))
    assert model.training


def test_progress_bar_and_errors(capsys):
    model = _Recorder(lambda ids: torch.zeros(*ids.shape, 4))
    perplexity(model, torch.zeros(3, 4, dtype=torch.long), batch_size=2, progress=True)
    assert "perplexity" in capsys.readouterr().err
    with pytest.raises(AttnkdError, match="block_size >= 2"):
        perplexity(model, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(AttnkdError, match="num_blocks >= 1"):
        perplexity(model, torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(AttnkdError, match="batch_size"):
        perplexity(model, torch.zeros(3, 4, dtype=torch.long), batch_size=0)
    no_logits = _Recorder(lambda ids: torch.zeros(*ids.shape, 4))
    no_logits.forward = lambda input_ids, attention_mask: (torch.zeros(1),)
    with pytest.raises(AttnkdError, match="no .logits"):
        perplexity(no_logits, torch.zeros(3, 4, dtype=torch.long))
