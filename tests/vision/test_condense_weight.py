"""DataDAM's setting chosen per size on validation, the screened variant, the headline table,
resuming finished cells."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import vision_condense as plan  # noqa: E402
import vision_condense_choice as choice  # noqa: E402
from vision_helpers import read_json  # noqa: E402

from attnkd.cli import build_parser  # noqa: E402
from attnkd.errors import DataError  # noqa: E402

W1000, W100 = choice.CANDIDATES.values()
L1000, L100 = choice.CANDIDATES


def _cell(runs, folder, method, ipc, seed, test, val, weight=100.0):
    cfg = {"iterations": 3, "lr": 1.0, "real_batch": 2, "augment": True,
           "attention_weight": weight, "power": 1.0}  # fmt: skip
    path = runs / folder / f"condense-{method}-ipc{ipc}-s{seed}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({
        "test_accuracies": [test], "test_accuracy": test, "val_accuracy": val,
        "judge_seeds": [seed], "eval_steps": 5, "config": cfg, "condensed_from_images": 55000,
        "condense_seconds": 1.0, "judge_seconds": 2.0, "mean_abs_change_from_start": 0.1}))


def _weight(runs, folder, weight, ipc, tests, vals):
    for seed, test, val in zip(plan.FINAL["seeds"][ipc], tests, vals, strict=False):
        _cell(runs, folder, "datadam", ipc, seed, test, val, weight)


def test_the_weight_is_chosen_by_validation_never_by_test(runs):
    _weight(runs, W1000, 1000.0, 1, (0.90, 0.90, 0.90), (0.60, 0.61, 0.62))
    _weight(runs, W100, 100.0, 1, (0.50, 0.50, 0.50), (0.70, 0.70, 0.70))
    pick = choice.choose(read_json, [1])["ipc1"]
    assert pick["chosen"] == L100 and pick["complete"] == [L1000, L100]
    assert pick["candidates"][L100]["val_accuracy"] == pytest.approx(0.70)
    assert pick["candidates"][L1000]["mean"] == pytest.approx(0.90)  # reported, not used
    _weight(runs, W100, 100.0, 1, (0.99, 0.99, 0.99), (0.61, 0.61, 0.61))  # val now equal
    assert choice.choose(read_json, [1])["ipc1"]["chosen"] == L1000  # the first on a tie


def test_a_weight_without_every_seed_cannot_be_chosen(runs):
    _weight(runs, W1000, 1000.0, 10, (0.7, 0.7, 0.7), (0.70, 0.70, 0.70))
    _weight(runs, W100, 100.0, 10, (0.8, 0.8), (0.90, 0.90))  # seed 2 missing
    pick = choice.choose(read_json, [10])["ipc10"]
    assert pick["chosen"] == L1000 and pick["complete"] == [L1000]
    assert pick["candidates"][L100]["n"] == 2
    assert choice.choose(read_json, [50])["ipc50"] == {"chosen": None, "complete": [],
                                                   "candidates": {}}  # fmt: skip


@pytest.mark.parametrize("bad", ["mixed", "no_val"])
def test_malformed_cells_are_a_data_error_naming_the_file(runs, bad):
    _weight(runs, W1000, 1000.0, 1, (0.7, 0.7, 0.7), (0.70, 0.70, 0.70))
    if bad == "mixed":
        _cell(runs, W1000, "datadam", 1, 2, 0.7, 0.7, weight=100.0)
        match = "condense-datadam-ipc1-s2/results.json.*mixed"
    else:
        _cell(runs, W1000, "datadam", 1, 1, 0.7, None, weight=1000.0)
        match = "condense-datadam-ipc1-s1/results.json.*val_accuracy"
    with pytest.raises(DataError, match=match):
        choice.choose(read_json, [1])


def test_headline_puts_the_chosen_weight_against_random_and_dm(runs, tmp_path):
    for seed, (r, d) in enumerate(((0.50, 0.66), (0.56, 0.67), (0.53, 0.68))):
        _cell(runs, W1000, "random", 1, seed, r, r)
        _cell(runs, W1000, "dm", 1, seed, d, d)
    _weight(runs, W1000, 1000.0, 1, (0.60, 0.62, 0.61), (0.60, 0.62, 0.61))
    _weight(runs, W100, 100.0, 1, (0.65, 0.70, 0.66), (0.66, 0.70, 0.66))
    cells = plan.final_cells(read_json, None, tmp_path / "out", sizes=[1])
    row = choice.headline(cells, choice.choose(read_json, [1]))["ipc1"]
    assert row["datadam_setting"] == L100 and row["datadam"]["attention_weight"] == 100.0
    assert row["datadam"]["accuracy"] == [0.65, 0.70, 0.66]
    lead = row["datadam_minus_random"]
    assert lead["same_seed_differences"] == pytest.approx([0.15, 0.14, 0.13])
    assert lead["separated"] and lead["mean_difference"] == pytest.approx(0.14)
    dm = row["datadam_minus_dm"]
    assert dm["same_seed_differences"] == pytest.approx([-0.01, 0.03, -0.02])
    assert not dm["separated"]  # 0.0 apart against stds of 0.026 and 0.01


def test_final_jobs_resume_and_cover_three_seeds_at_every_size(runs):
    for label in plan.DATADAM_WEIGHTS:
        (runs / "condense-select" / label / "condense-datadam-ipc10-s0").mkdir(parents=True)
        (runs / "condense-select" / label / "condense-datadam-ipc10-s0" / "results.json"
         ).write_text(json.dumps({"val_accuracy": 0.5}))  # fmt: skip
    _cell(runs, W1000, "dm", 50, 0, 0.8, 0.8)
    _cell(runs, W1000, "random", 50, 1, 0.8, 0.8)
    calls = []
    for job in plan.final_jobs(lambda a, f: calls.append(a), runs, plan.FINAL["methods"], [50]):
        job()
    todo = {(a[a.index("--method") + 1], a[a.index("--seeds") + 1]) for a in calls}
    every = {(m, str(s)) for m in plan.FINAL["methods"] for s in (0, 1, 2)}
    assert todo == every - {("dm", "0"), ("random", "1")} and len(calls) == len(todo)
    for a in calls:
        assert a[a.index("--iterations") + 1] == "80" and a[a.index("--eval-steps") + 1] == "600"


def test_weight100_jobs_cover_the_sizes_asked_and_skip_finished_cells(runs):
    _cell(runs, W100, "datadam", 10, 1, 0.8, 0.8)
    calls = []
    for job in plan.sensitivity_jobs(lambda a, f: calls.append(a), runs, [10]):
        job()
    assert [a[a.index("--seeds") + 1] for a in calls] == ["0", "2"]
    for a in calls:
        assert a[a.index("--ipc") + 1] == "10" and a[a.index("--attention-weight") + 1] == "100"
        assert a[a.index("--out") + 1] == str(runs / W100)


def test_tables_stop_with_exit_2_and_no_traceback_on_a_malformed_cell(tmp_path):
    cell = tmp_path / "runs" / W1000 / "condense-datadam-ipc1-s0"
    cell.mkdir(parents=True)
    (cell / "results.json").write_text(json.dumps({
        "test_accuracies": [0.5], "test_accuracy": 0.5, "config": {"attention_weight": 100}}))
    env_path = str(SCRIPTS.parent / "src")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "vision_repro.py"), "tables",
                           "--condense-only", "--out", str(tmp_path / "results")],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "val_accuracy" in proc.stderr
    assert not (tmp_path / "results" / "vision_condense.json").exists()


def _screen(runs, label, val, test=0.5):
    _cell(runs, f"{choice.IMPROVE['out']}/{label}", "datadam", 1, 0, test, val)


def test_a_variant_is_adopted_only_when_it_beats_the_base_on_validation(runs):
    _weight(runs, W1000, 1000.0, 1, (0.7, 0.7, 0.7), (0.60, 0.60, 0.60))
    _weight(runs, W100, 100.0, 1, (0.6, 0.6, 0.6), (0.66, 0.70, 0.70))  # base: seed 0 at 0.66
    first, second = choice.IMPROVE["variants"]
    _screen(runs, first, 0.69, test=0.1)
    assert choice.improve_adopted(read_json) is None  # waits for every variant
    _screen(runs, second, 0.67, test=0.99)
    assert choice.improve_adopted(read_json) == first  # validation, not test
    _screen(runs, first, 0.65)
    _screen(runs, second, 0.66)
    assert choice.improve_adopted(read_json) is None  # a tie with the base is no win


def test_the_screen_then_the_adopted_variants_seeds_join_the_candidates(runs):
    _weight(runs, W1000, 1000.0, 1, (0.7, 0.7, 0.7), (0.60, 0.60, 0.60))
    _weight(runs, W100, 100.0, 1, (0.6, 0.6, 0.6), (0.66, 0.66, 0.66))
    calls = []
    for job in choice.improve_jobs(lambda a, f: calls.append(a), runs, read_json):
        job()
    assert [a[a.index("--seeds") + 1] for a in calls] == ["0"] * len(choice.IMPROVE["variants"])
    parsed = [build_parser().parse_args(a) for a in calls]  # what the CLI will run
    assert [(x.nets, x.real_batch) for x in parsed] == [(4, 32), (1, 128)]
    assert all(x.attention_weight == 100.0 and x.ipc == [1] and x.iterations == 300
               and x.val_images == plan.VAL_IMAGES and not x.select for x in parsed)
    first, second = choice.IMPROVE["variants"]
    _screen(runs, first, 0.68)
    _screen(runs, second, 0.60)
    calls.clear()
    for job in choice.improve_jobs(lambda a, f: calls.append(a), runs, read_json):
        job()
    assert [a[a.index("--seeds") + 1] for a in calls] == ["1", "2"]
    assert all(a[a.index("--out") + 1].endswith(first) for a in calls)
    extra = choice.improve_candidates(read_json)
    assert len(choice.choose(read_json, [1], extra)["ipc1"]["complete"]) == 2
    for seed, val in ((1, 0.69), (2, 0.70)):
        _cell(runs, f"{choice.IMPROVE['out']}/{first}", "datadam", 1, seed, 0.5, val)
    pick = choice.choose(read_json, [1], choice.improve_candidates(read_json))["ipc1"]
    assert pick["chosen"] == f"{first} on the size's setting" and len(pick["complete"]) == 3
    extra = choice.improve_candidates(read_json)
    assert choice.choose(read_json, [10], extra)["ipc10"]["candidates"] == {}


def test_improve_table_reports_the_screen_on_validation_and_copies_the_grids(runs, tmp_path):
    _weight(runs, W100, 100.0, 1, (0.6, 0.6, 0.6), (0.66, 0.66, 0.66))
    first, second = choice.IMPROVE["variants"]
    _screen(runs, first, 0.64)
    _screen(runs, second, 0.65)
    copied = []
    table = choice.improve_table(read_json, lambda a, b: copied.append(b.name), tmp_path)
    assert table["base"] == L100 and table["adopted"] is None and table["cells"] == {}
    vals = {k: v["val_accuracy"] for k, v in table["screen_seed0"].items()}
    assert vals == {L100: 0.66, first: 0.64, second: 0.65}
    assert copied == [f"improve-{first}-ipc1-s0.png", f"improve-{second}-ipc1-s0.png"]


def test_paired_test_matches_the_closed_form_at_two_degrees_of_freedom():
    # t with 2 degrees of freedom: P(T > t) = 1/2 - t / (2 sqrt(2 + t^2))
    out = choice.paired_test([0.01, 0.02, 0.03])
    t = 0.02 / (0.01 / 3**0.5)
    assert out["paired_t"] == pytest.approx(t)
    assert out["p_one_sided"] == pytest.approx(0.5 - t / (2 * (2 + t * t) ** 0.5))
    assert out["beats"] and out["pairs"] == 3
    assert not choice.paired_test([0.01, -0.02, 0.015])["beats"]
    assert not choice.paired_test([-0.01, -0.02, -0.03])["beats"]  # one-sided: below is no win
    assert choice.paired_test([0.01])["p_one_sided"] is None
    assert choice.paired_test([0.01, 0.01])["beats"] is False  # no spread: no test


def _all_seeds(runs, ipc, dam, dm):
    seeds = plan.seeds_of(ipc, more=True)
    for seed, a, b in zip(seeds, dam, dm, strict=True):
        _cell(runs, W1000, "datadam", ipc, seed, a, a, 1000.0)
        _cell(runs, W1000, "dm", ipc, seed, b, b)
        _cell(runs, W1000, "random", ipc, seed, 0.5, 0.5)


def test_more_seeds_never_change_the_choice_and_join_the_chosen_settings_row(runs, tmp_path):
    ipc = plan.MORE["sizes"][0]
    n = len(plan.seeds_of(ipc, more=True))
    assert n > len(plan.FINAL["seeds"][ipc]) and plan.seeds_of(ipc) == plan.FINAL["seeds"][ipc]
    dam = [0.80 + 0.001 * i for i in range(n)]
    _all_seeds(runs, ipc, dam, [d - 0.002 - 0.0005 * (i % 2) for i, d in enumerate(dam)])
    _weight(runs, W100, 100.0, ipc, (0.5, 0.5, 0.5), (0.79, 0.79, 0.79))
    for seed in plan.MORE["seeds"]:  # great on validation, but not a seed the rule reads
        _cell(runs, W100, "datadam", ipc, seed, 0.99, 0.99, 100.0)
    pick = choice.choose(read_json, [ipc])
    assert pick[f"ipc{ipc}"]["chosen"] == L1000  # 0.801 > 0.79 on FINAL's seeds
    cells = plan.final_cells(read_json, None, tmp_path, sizes=[ipc], more=True)
    assert cells[f"dm/ipc{ipc}"]["n"] == n
    dam_cells = choice.chosen_cells(read_json, pick)
    assert dam_cells[f"ipc{ipc}"]["n"] == n and dam_cells[f"ipc{ipc}"]["folder"] == W1000
    row = choice.headline(cells, pick, dam_cells)[f"ipc{ipc}"]
    lead = row["datadam_minus_dm"]
    assert row["datadam"]["n"] == n and lead["pairs"] == n
    assert lead["beats"] and lead["p_one_sided"] < plan.MORE["alpha"]
    assert not lead["separated"]  # 0.002 apart, inside the spreads: the paired test sees it
    three = choice.headline(cells, pick)[f"ipc{ipc}"]  # without dam_cells: FINAL's seeds only
    assert three["datadam"]["n"] == len(plan.FINAL["seeds"][ipc])


def test_more_jobs_run_the_chosen_setting_and_dm_first_then_the_random_subsets(runs):
    ipc10, ipc50 = sorted(plan.MORE["sizes"])
    _weight(runs, W1000, 1000.0, ipc10, (0.5, 0.5, 0.5), (0.70, 0.70, 0.70))
    _weight(runs, W100, 100.0, ipc10, (0.5, 0.5, 0.5), (0.80, 0.80, 0.80))
    first = plan.MORE["seeds"][0]
    _cell(runs, W1000, "dm", ipc10, first, 0.8, 0.8)  # finished: skipped
    calls = []
    for job in choice.more_jobs(lambda a, f: calls.append(a), runs, read_json):
        job()
    got = [(a[a.index("--method") + 1], int(a[a.index("--ipc") + 1]),
            int(a[a.index("--seeds") + 1])) for a in calls]  # fmt: skip
    assert {s for _, _, s in got} == set(plan.MORE["seeds"])
    assert ("dm", ipc10, first) not in got and ("dm", ipc10, first + 1) in got
    assert not any(m == "datadam" and i == ipc50 for m, i, _ in got)  # nothing chosen there yet
    methods = [m for m, _, _ in got]
    assert methods.index("random") > max(i for i, m in enumerate(methods) if m != "random")
    for a, (m, i, _) in zip(calls, got, strict=True):
        assert a[a.index("--iterations") + 1] == str(plan.FINAL["iterations"][i])
        assert a[a.index("--eval-steps") + 1] == str(plan.FINAL["judge_steps"][i])
        assert "--select" not in a and a[a.index("--val-images") + 1] == str(plan.VAL_IMAGES)
        if m == "datadam":
            assert a[a.index("--attention-weight") + 1] == "100"
            assert a[a.index("--out") + 1] == str(runs / W100)
        else:
            assert a[a.index("--out") + 1] == str(runs / "condense-final")


def test_budget_jobs_score_validation_only_at_the_chosen_setting_and_tabulate_the_gap(runs):
    ipc, seed = choice.BUDGET["ipc"], choice.BUDGET["seed"]
    assert choice.budget_jobs(lambda a, f: None, runs, read_json) == []  # nothing chosen yet
    _weight(runs, W1000, 1000.0, ipc, (0.5, 0.5, 0.5), (0.70, 0.70, 0.70))
    _weight(runs, W100, 100.0, ipc, (0.5, 0.5, 0.5), (0.80, 0.80, 0.80))
    _cell(runs, W1000, "dm", ipc, seed, 0.5, 0.79)
    short, long = choice.BUDGET["iterations"][0], choice.BUDGET["iterations"][-1]
    _cell(runs, f"{choice.BUDGET['out']}/it{short}", "dm", ipc, seed, 0.5, 0.81)
    calls = []
    for job in choice.budget_jobs(lambda a, f: calls.append(a), runs, read_json):
        job()
    got = [(a[a.index("--method") + 1], a[a.index("--iterations") + 1]) for a in calls]
    assert ("dm", str(short)) not in got and ("datadam", str(short)) in got
    assert got[-1][1] == str(long) and len(got) == 2 * len(choice.BUDGET["iterations"]) - 1
    for a in calls:  # validation only, never the test set
        assert "--select" in a and a[a.index("--val-images") + 1] == str(plan.VAL_IMAGES)
        if a[a.index("--method") + 1] == "datadam":
            assert a[a.index("--attention-weight") + 1] == "100"
    _cell(runs, f"{choice.BUDGET['out']}/it{short}", "datadam", ipc, seed, 0.5, 0.84)
    rows = choice.budget_table(read_json)["rows"]
    first = rows[f"iterations{plan.FINAL['iterations'][ipc]}"]
    assert first["datadam"]["folder"] == W100
    assert first["datadam_minus_dm"] == pytest.approx(0.80 - 0.79)
    assert rows[f"iterations{short}"]["datadam_minus_dm"] == pytest.approx(0.84 - 0.81)
    assert rows[f"iterations{long}"] == {}
