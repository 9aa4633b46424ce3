"""bench/teacher_cache.py on a tiny Llama recipe: it runs, writes its JSON, and its k = V check
finds the cached loss curve equal to the live teacher's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lm"))
from lm_fixtures import write_model, write_text  # noqa: E402

_PATH = Path(__file__).resolve().parents[2] / "bench" / "teacher_cache.py"
_spec = importlib.util.spec_from_file_location("bench_teacher_cache", _PATH)
tc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tc
_spec.loader.exec_module(tc)

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]


def test_bench_runs_and_full_k_matches(tmp_path):
    teacher = write_model(tmp_path / "teacher")
    text = write_text(tmp_path / "story.txt")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"name: tiny\ntask: causal_lm\nteacher: {{name: {teacher}}}\nstudent: {{layers: [0, 2]}}\n"
        "losses: [{name: logits, kind: fkl}]\n"
        f"data: {{train_sources: ['file:{text}'], val_fraction: 0.1, eval_fraction: 0.1}}\n",
        encoding="utf-8",
    )
    out = tmp_path / "bench.json"
    before = torch.get_num_threads()
    try:
        tc.main(
            [
                "--recipe",
                str(recipe),
                "--blocks",
                "4",
                "--block-size",
                "16",
                "--batch",
                "2",
                "--top-k",
                "5",
                "--rounds",
                "2",
                "--full-check-steps",
                "2",
                "--json",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(before)
    res = json.loads(out.read_text())
    assert res["tokens_per_epoch"] == 64 and res["top_k"] == 5
    assert len(res["epoch_seconds"]["teacher"]) == len(res["epoch_seconds"]["cache"]) == 2
    assert res["teacher_over_cache"] > 0
    assert res["bytes_per_token"] == pytest.approx(4 + 5 * 4 + 5 * 2 + 4, rel=0.3)
    assert res["full_k_check"]["max_rel_diff"] < 1e-4
