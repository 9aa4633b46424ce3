"""A staged run under ``torchrun --nproc-per-node 2`` (gloo, CPU): every rank runs every stage,
the next stage starts from the previous stage's export, rank 0 alone writes the manifest, the
final export and one results.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_int_distributed import torchrun_distill  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_staged_run_on_two_ranks(base_overrides, tmp_path):
    stages = ("stages=[{name: general, data: {train_sources: [stsb:train]}}, "
              "{name: task, data: {train_sources: [sst2:train]}, "
              "student: {freeze: [embeddings]}, train: {max_steps: 4}}]")  # fmt: skip
    args = [*base_overrides, "name=two", stages, "--no-progress"]
    out = torchrun_distill(args, tmp_path)
    assert out.stdout.count("run folder:") == 1  # rank 0 reports, once
    run = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir="))) / "two"
    results = json.loads((run / "results.json").read_text())
    assert [s["results"]["train"]["steps"] for s in results["stages"]] == [6, 4]
    manifest = json.loads((run / "stages.json").read_text())
    assert [s["done"] for s in manifest["stages"]] == [True, True]
    first = load_file(run / "stages/01-general/student/model.safetensors")
    final = load_file(run / "student/model.safetensors")
    key = "embeddings.word_embeddings.weight"  # frozen in stage 2: carried from stage 1
    assert (final[key] == first[key]).all()
    assert not list(run.glob("**/*.tmp*"))
