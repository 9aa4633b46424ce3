"""The report's headline row of a causal-LM run names the NLL retention and the perplexity
ratio (student / teacher) side by side."""

from __future__ import annotations

from attnkd.report import html


def test_lm_headline_shows_nll_retention_and_perplexity_ratio():
    results = {
        "eval_split": "last 0.05 of the token blocks",
        "eval_tokens": 1000,
        "teacher": {"perplexity": 87.34, "nll": 4.4698},
        "student": {"perplexity": 160.51, "nll": 5.0783},
        "retention": 4.4698 / 5.0783,
        "perplexity_ratio": 160.51 / 87.34,
    }
    rows = html._headline(results, {})
    (row,) = [r for r in rows if r[0].startswith("perplexity")]
    assert "NLL retention, perplexity ratio" in row[0]
    assert row[3] == "88.0%, perplexity 1.84×"
    del results["perplexity_ratio"]  # results written before the ratio existed: computed
    (row,) = [r for r in html._headline(results, {}) if r[0].startswith("perplexity")]
    assert row[3] == "88.0%, perplexity 1.84×"
