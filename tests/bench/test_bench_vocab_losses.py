"""bench/vocab_losses.py: every implementation measures the same loss and gradient."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "vocab_losses.py"
_spec = importlib.util.spec_from_file_location("bench_vocab_losses", _PATH)
vl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vl)


@pytest.mark.parametrize("kind", ["fkl", "jsd"])
def test_cases_agree(kind):
    runs = {impl: vl.run_case(kind, impl, 16, 50, 1, 4) for impl in ("naive", "chunked", "reuse")}
    for impl in ("chunked", "reuse"):
        assert runs[impl]["value"] == pytest.approx(runs["naive"]["value"], rel=1e-5)
        assert runs[impl]["grad_norm"] == pytest.approx(runs["naive"]["grad_norm"], rel=1e-5)
        assert runs[impl]["grad_probe"] == pytest.approx(runs["naive"]["grad_probe"], rel=1e-4)
    hidden = vl.run_case(kind, "chunked", 16, 50, 1, 4, hidden=8)
    assert hidden["peak_extra_mb"] >= 0 and hidden["median_ms"] > 0


@pytest.mark.slow
def test_main_writes_json(tmp_path):
    out = tmp_path / "v.json"
    assert vl.main(["--sizes", "16", "--vocab", "50", "--kinds", "fkl", "--repeats", "1",
                    "--json", str(out)]) == 0  # fmt: skip
    row = json.loads(out.read_text())["rows"][0]
    assert {"naive", "chunked", "reuse"} <= set(row) and row["reuse"]["value"] > 0
