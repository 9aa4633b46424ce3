"""Schedule shape, AdamW parameter groups, and deterministic batch order."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import Tiny, cfg, collate, make_items

from attnkd.engine import Schedule, ShuffledBatches, build_optimizer, split_parameters
from attnkd.errors import AttnkdError, ConfigError


def _naive_linear(t: int, w: int, total: int) -> float:
    """Straight line 1/w, 2/w, ..., 1 then a straight line from 1 at the peak to 0 at ``total``."""
    if t < w:
        return (t + 1) / w
    peak = w - 1 if w > 0 else 0
    return (total - t) / (total - peak)


@pytest.mark.parametrize("total,w", [(10, 3), (7, 0), (5, 5), (100, 6), (1, 0)])
def test_linear_matches_naive_formula(total, w):
    s = Schedule(total, w, "linear")
    for t in range(total):
        assert s.factor(t) == pytest.approx(_naive_linear(t, w, total))


def test_shape_warmup_peak_and_decay_to_zero():
    s = Schedule(20, 5, "linear")
    f = [s.factor(t) for t in range(21)]
    assert f[0] == pytest.approx(0.2)  # first update already moves
    assert f[4] == pytest.approx(1.0)  # end of warmup is the peak
    assert all(a < b for a, b in zip(f[:5], f[1:5]))  # strictly rising in warmup
    assert all(a > b for a, b in zip(f[4:20], f[5:20]))  # strictly falling after
    assert f[19] == pytest.approx(1 / 16)  # last update, small but positive
    assert f[20] == pytest.approx(0.0)  # would be zero one past the end
    assert max(f) == pytest.approx(1.0) and min(f) >= 0


def test_cosine_endpoints_and_midpoint():
    s = Schedule(13, 3, "cosine")  # peak at step 2, q = (t - 2) / 11
    assert s.factor(2) == pytest.approx(1.0)
    assert s.factor(3) < 1.0
    assert s.factor(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 11)))
    assert s.factor(12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 11)))
    assert s.factor(12) > 0
    assert Schedule(10, 0, "cosine").factor(0) == 1.0
    assert s.factor(13) == pytest.approx(0.0, abs=1e-12)


def test_constant_and_from_config_rounding():
    assert Schedule(10, 2, "constant").factor(9) == 1.0
    s = Schedule.from_config(cfg(max_steps=1000, warmup_ratio=0.06))
    assert s.warmup_steps == 60 and s.max_steps == 1000
    assert Schedule.from_config(cfg(max_steps=5, warmup_ratio=0.5)).warmup_steps == 3
    assert Schedule.from_config(cfg(max_steps=1, warmup_ratio=0.5)).warmup_steps == 1


@pytest.mark.parametrize("kw", [dict(max_steps=0), dict(warmup_ratio=1.5), dict(warmup_ratio=-0.1)])
def test_bad_schedule_settings(kw):
    with pytest.raises(ConfigError):
        Schedule.from_config(cfg(**kw))
    with pytest.raises(ConfigError):
        Schedule(10, 0, "exponential")


def test_apply_sets_lr_on_all_groups():
    opt = build_optimizer(Tiny(), cfg(lr=0.5))
    lr = Schedule(10, 4, "linear").apply(opt, 1)
    assert lr == pytest.approx(0.25)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 0.25])


def test_no_decay_on_bias_and_norm_and_frozen_skipped():
    m = Tiny()
    split = split_parameters(m)
    assert set(split.decay) == {"inp.weight", "out.weight", "table.weight"}
    assert set(split.no_decay) == {"inp.bias", "norm.weight", "norm.bias", "out.bias"}
    opt = build_optimizer(m, cfg(weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["params"][0] is m.inp.weight

    m2 = Tiny()
    m2.table.weight.requires_grad_(False)
    opt2 = build_optimizer(m2, cfg())
    assert split_parameters(m2).frozen == ["table.weight"]
    assert all(p is not m2.table.weight for g in opt2.param_groups for p in g["params"])


def test_tied_parameter_listed_once():
    m = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    m[1].weight = m[0].weight
    split = split_parameters(m)
    assert split.decay == ["0.weight"]


def test_shuffled_batches_deterministic_and_a_permutation():
    items = make_items(10)
    b = ShuffledBatches(items, 3, collate, seed=5)
    assert b.num_batches == 3  # drop_last
    again = ShuffledBatches(items, 3, collate, seed=5)
    for e in range(3):
        idx = [i for k in range(3) for i in b.indices_at(e, k)]
        assert len(set(idx)) == 9 and set(idx) <= set(range(10))
        assert idx == [i for k in range(3) for i in again.indices_at(e, k)]
    assert b.indices_at(0, 0) + b.indices_at(0, 1) != b.indices_at(1, 0) + b.indices_at(1, 1)
    x, y = b.batch_at(2, 1)
    want = torch.stack([items[i][0] for i in b.indices_at(2, 1)])
    assert torch.equal(x, want) and y.shape == (3,)
    # random access in any order gives the same batch
    assert b.indices_at(0, 2) == ShuffledBatches(items, 3, collate, seed=5).indices_at(0, 2)


def test_shuffled_batches_edges():
    items = make_items(10)
    assert ShuffledBatches(items, 3, collate, drop_last=False).num_batches == 4
    assert ShuffledBatches(items, 3, collate, drop_last=False).indices_at(0, 3).__len__() == 1
    assert ShuffledBatches(items, 64, collate).num_batches == 1  # smaller than one batch
    assert ShuffledBatches(items, 4, collate, shuffle=False).indices_at(3, 1) == [4, 5, 6, 7]
    with pytest.raises(AttnkdError):
        ShuffledBatches([], 4, collate)
    with pytest.raises(IndexError):
        ShuffledBatches(items, 3, collate).indices_at(0, 3)
