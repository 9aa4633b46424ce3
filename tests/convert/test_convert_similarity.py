"""EchoAtt-style attention similarity between layers."""

from __future__ import annotations

import math

import pytest
import torch
from convert_helpers import batch, tiny_bert, tiny_llama

from attnkd.convert.similarity import (
    SimilarityTable,
    attention_row_similarity,
    attention_similarity,
)


def _rows(seed, b=2, h=3, s=5):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, h, s, s, generator=g) * 2, -1)


def test_row_similarity_against_a_loop():
    p, q = _rows(0), _rows(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    js, cos = attention_row_similarity(p, q, mask)
    want_js, want_cos, n = 0.0, 0.0, 0
    for b in range(2):
        for h in range(3):
            for i in range(5):
                if not mask[b, i]:
                    continue
                pr, qr = p[b, h, i].double(), q[b, h, i].double()
                mr = (pr + qr) / 2
                want_js += 0.5 * sum(
                    float(a) * math.log(float(a) / float(c)) for a, c in zip(pr, mr)
                ) + 0.5 * sum(float(a) * math.log(float(a) / float(c)) for a, c in zip(qr, mr))
                want_cos += float(pr @ qr / (pr.norm() * qr.norm()))
                n += 1
    assert js.item() == pytest.approx(want_js / n, rel=1e-9)
    assert cos.item() == pytest.approx(want_cos / n, rel=1e-9)


def test_identical_maps_and_zeros_outside_the_causal_triangle():
    p = torch.softmax(
        torch.randn(1, 2, 4, 4).masked_fill(~torch.ones(4, 4).tril().bool(), -1e9), -1
    )
    js, cos = attention_row_similarity(p, p)
    assert js.item() == pytest.approx(0.0, abs=1e-12) and cos.item() == pytest.approx(1.0)
    one_hot = torch.eye(4)[None, None]
    js, _ = attention_row_similarity(one_hot, one_hot.roll(1, -1))
    assert js.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("make,vocab", [(tiny_bert, 50), (tiny_llama, 60)])
def test_table_of_a_model(make, vocab):
    model = make()
    ids, mask = batch(vocab)
    table = attention_similarity(model, [{"input_ids": ids, "attention_mask": mask}] * 2)
    n = model.config.num_hidden_layers
    assert table.batches == 2 and table.tokens == 2 * int(mask.sum())
    js = torch.tensor(table.js)
    assert js.shape == (n, n) and torch.allclose(js, js.T) and (js.diagonal() == 0).all()
    assert (js[~torch.eye(n, dtype=torch.bool)] > 0).all()
    assert torch.tensor(table.cosine).diagonal().eq(1).all()
    assert model.config._attn_implementation == "sdpa"  # restored
    assert "JS divergence" in table.format()


def test_suggest_chains_to_the_first_layer_of_a_run():
    js = [[0, 0.01, 0.5, 0.02], [0.01, 0, 0.03, 0.5], [0.5, 0.03, 0, 0.5], [0.02, 0.5, 0.5, 0]]
    table = SimilarityTable(js=js, cosine=js, batches=1, tokens=1)
    assert table.suggest(0.05) == {1: 0, 2: 0, 3: 0}
    assert table.suggest(0.015) == {1: 0}
