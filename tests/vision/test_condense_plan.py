"""The condensation plan of scripts/vision_repro.py: weight chosen on validation, final cells."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import vision_condense as plan  # noqa: E402
from vision_helpers import read_json  # noqa: E402


def _write(path: Path, obj: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(obj))


def _select(runs, label, acc):
    _write(runs / "condense-select" / label / "condense-datadam-ipc10-s0", {"val_accuracy": acc})


def test_attention_weight_waits_for_every_selection_run_then_takes_the_best(runs):
    labels = list(plan.DATADAM_WEIGHTS)
    _select(runs, labels[0], 0.79)
    assert plan.chosen_attention_weight(read_json) is None
    _select(runs, labels[1], 0.80)
    assert plan.chosen_attention_weight(read_json) == plan.DATADAM_WEIGHTS[labels[1]]
    _select(runs, labels[1], 0.79)  # a tie keeps the first
    assert plan.chosen_attention_weight(read_json) == plan.DATADAM_WEIGHTS[labels[0]]


def test_final_jobs_hold_datadam_back_until_its_weight_is_chosen(runs):
    calls = []
    jobs = plan.final_jobs(lambda a, f: calls.append(a), runs, ["datadam", "dm"], [1])
    for job in jobs:
        job()
    assert {a[2] for a in calls} == {"dm"} and len(calls) == len(plan.FINAL["seeds"][1])
    for label in plan.DATADAM_WEIGHTS:
        _select(runs, label, 0.5)
    calls.clear()
    for job in plan.final_jobs(lambda a, f: calls.append(a), runs, ["datadam"], [1]):
        job()
    first = plan.DATADAM_WEIGHTS[next(iter(plan.DATADAM_WEIGHTS))]
    assert all(a[a.index("--attention-weight") + 1] == first for a in calls) and calls
    assert all("--val-images" in a and "--select" not in a for a in calls)


def test_final_cells_average_over_condensation_seeds(runs, tmp_path):
    cfg = {"iterations": 3, "lr": 1.0, "real_batch": 2, "augment": True,
           "attention_weight": 100.0, "power": 1.0}  # fmt: skip
    for seed, acc in zip(plan.FINAL["seeds"][10], (0.70, 0.72, 0.74), strict=False):
        _write(runs / "condense-final" / f"condense-dm-ipc10-s{seed}", {
            "test_accuracies": [acc], "test_accuracy": acc, "val_accuracy": acc + 0.01,
            "judge_seeds": [seed], "eval_steps": 5, "config": cfg,
            "condensed_from_images": 55000, "condense_seconds": 1.0, "judge_seconds": 2.0,
            "mean_abs_change_from_start": 0.1})  # fmt: skip
    copied = []
    cells = plan.final_cells(read_json, lambda a, b: copied.append(b), tmp_path / "out")
    cell = cells["dm/ipc10"]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(0.72)
    assert cell["std"] == pytest.approx(0.02) and cell["condense_seeds"] == [0, 1, 2]
    assert cell["val_accuracy"] == pytest.approx(0.73)
    assert cells["datadam/ipc10"] == {"n": 0, "mean": None, "std": None}
    assert [p.name for p in copied] == ["dm-ipc10-s0.png"]


def test_weight100_cells_are_datadam_at_the_authors_weight_with_the_final_knobs(runs):
    calls = []
    for job in plan.sensitivity_jobs(lambda a, f: calls.append(a), runs):
        job()
    sizes = plan.SENSITIVITY["sizes"]
    assert len(calls) == sum(len(plan.FINAL["seeds"][i]) for i in sizes)
    assert [a[a.index("--ipc") + 1] for a in calls][:: len(plan.FINAL["seeds"][1])] == [
        str(i) for i in sizes]  # size by size
    for a in calls:
        ipc = int(a[a.index("--ipc") + 1])
        assert a[a.index("--method") + 1] == "datadam" and ipc in sizes
        assert a[a.index("--attention-weight") + 1] == "100"
        assert a[a.index("--iterations") + 1] == str(plan.FINAL["iterations"][ipc])
        assert all(x in a for x in plan.FINAL["args"])
