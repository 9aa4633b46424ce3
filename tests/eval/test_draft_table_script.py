"""scripts/draft_table.py helpers: the budget that drives the learning-rate decay (steps or
wall time, whichever runs out first), variant names, and the α-vs-tokens trend fit."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "draft_table.py"
_spec = importlib.util.spec_from_file_location("draft_table_script", _PATH)
dt = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = dt
_spec.loader.exec_module(dt)


def test_budget_progress_takes_the_larger_of_steps_and_time():
    assert dt.budget_progress(0, 100, 0.0, 0.0) == 0.0
    assert dt.budget_progress(50, 100, 1e9, 0.0) == 0.5  # no time limit: steps only
    assert dt.budget_progress(10, 100, 30.0, 1.0) == pytest.approx(0.5)  # 30 s of 60
    assert dt.budget_progress(90, 100, 30.0, 1.0) == pytest.approx(0.9)
    assert dt.budget_progress(10, 100, 61.0, 1.0) > 1.0  # out of time: training stops


def test_variant_names_carry_depth_loss_and_on_policy_fraction():
    vs = dt.parse_variants("2:ce,3:jsd,2:tvd@0.5")
    assert [(v.name, v.depth, v.loss, v.onpolicy) for v in vs] == [
        ("L2-ce", 2, "ce", 0.0),
        ("L3-jsd", 3, "jsd", 0.0),
        ("L2-tvd-onpolicy0.5", 2, "tvd", 0.5),
    ]


def test_trend_fits_alpha_against_log_tokens_and_inverts_it():
    # α = 0.1 + 0.05 ln(tokens) exactly: the fit recovers it and the tokens for α = 0.6.
    hist = [{"step": 0, "alpha": 0.0}]  # step 0 is left out of the fit
    hist += [{"step": s, "alpha": 0.1 + 0.05 * math.log(s * 256)} for s in (10, 20, 40, 80)]
    info = {"batch": 2, "length": 128, "variants": {"L2-jsd": {"history": hist}}}
    fit = dt.trend(info, 0.6)["L2-jsd"]
    assert fit["a"] == pytest.approx(0.1) and fit["b_per_ln_token"] == pytest.approx(0.05)
    assert fit["tokens_for_target_alpha"] == pytest.approx(math.exp(10.0), rel=1e-6)


def test_alpha_for_speedup_inverts_the_cost_model():
    from attnkd.eval.spec_cost import expected_speedup

    v = {1: 1.05, 2: 1.2}
    need = dt.alpha_for_speedup(1.2, 0.1, v)
    best = max(expected_speedup(need, g, 0.1, x) for g, x in v.items())
    assert best == pytest.approx(1.2, abs=1e-6)
    assert dt.alpha_for_speedup(5.0, 0.1, v) == math.inf
