"""DataDAM's setting per size, chosen on validation, and the headline table of the condensation.

Candidates (CANDIDATES): DataDAM's final cells at one setting each, in one runs/ folder each: the
attention weight chosen at 10 images per class (1000, ``condense-final``), the authors' 100
(``condense-final-w100``) and, at IMPROVE's size, a variant of the size's chosen setting that won
a screen on validation (part ``condense-improve``). RULE picks one per size; the test set is
never read for it. :func:`headline` then puts it against the random subset and DM.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import vision_condense as plan
from scipy import stats

from attnkd.errors import DataError

Read = Callable[[Path], dict | None]
CANDIDATES = {"weight 1000": "condense-final", "weight 100": plan.SENSITIVITY["out"]}
"""Label -> runs/ folder of DataDAM's final cells at that setting; on a tie the first is kept."""
RULE = (
    "per size, DataDAM's setting is the candidate (one folder of final cells per setting: "
    "attention weight 1000 or 100, and at 1 image per class a screened variant if one was "
    "adopted) with the highest mean validation accuracy (held-out training images "
    "55,001-60,000) over the condensation seeds, among the candidates that have every "
    "condensation seed of that size; the first listed on a tie; test accuracy is never read"
)  # fmt: skip
IMPROVE = {"ipc": 1, "out": "condense-improve",
           "variants": {"nets4": ["--nets", "4"], "real128": ["--real-batch", "128"]}}  # fmt: skip
"""Changes to DataDAM screened at 1 image per class, condensation seed 0, on validation: four
random networks per iteration (the mean of their losses) or 128 real images per class and
iteration instead of 32, each on top of the setting RULE chose there from CANDIDATES. The best
is adopted only if its validation accuracy beats that setting's seed-0 cell; it then runs every
final seed and joins the candidates. Runs runs/condense-improve/<label>/."""


def _cell_folder(folder: str, ipc: int, seed: int) -> Path:
    return plan.RUNS / folder / f"condense-datadam-ipc{ipc}-s{seed}"


def choose(read: Read, sizes: list[int] | None = None,
           extra: dict[str, str] | None = None) -> dict:  # fmt: skip
    """Per size, by RULE: every candidate's cell (CANDIDATES, plus ``extra`` label -> folder at
    IMPROVE's size), the complete ones and the chosen label (None when none is complete)."""
    out = {}
    for ipc in sizes or list(plan.FINAL["seeds"]):
        need, candidates = len(plan.FINAL["seeds"][ipc]), {}
        more = extra if extra and ipc == IMPROVE["ipc"] else {}
        for label, folder in {**CANDIDATES, **more}.items():
            weight = _one_weight(read, folder, ipc)  # checks the cells before they are read
            if weight is not None:
                cells = plan.final_cells(read, None, Path("."), folder, ["datadam"], [ipc])
                candidates[label] = {"folder": folder, **cells[f"datadam/ipc{ipc}"]}
        complete = [w for w, c in candidates.items() if c["n"] == need]
        chosen = max(complete, key=lambda w: candidates[w]["val_accuracy"], default=None)
        out[f"ipc{ipc}"] = {"chosen": chosen, "complete": complete, "candidates": candidates}
    return out


def _one_weight(read: Read, folder: str, ipc: int) -> float | None:
    """The attention weight shared by every finished seed of DataDAM's cell in ``folder`` (None
    before any); a :class:`DataError` naming the file when seeds disagree or one has no
    validation score."""
    weights = set()
    for seed in plan.FINAL["seeds"][ipc]:
        path = _cell_folder(folder, ipc, seed) / "results.json"
        r = read(path)
        if not r or not r.get("test_accuracies"):
            continue
        if r.get("val_accuracy") is None:
            raise DataError(path, None, "no 'val_accuracy': DataDAM's setting is chosen on the "
                            "held-out slice (condense --val-images)")  # fmt: skip
        weights.add(r["config"]["attention_weight"])
        if len(weights) > 1:
            raise DataError(path, None, f"attention weights {sorted(weights)} mixed in one cell "
                            f"(runs/{folder}, {ipc} images per class): one setting per folder")
    return weights.pop() if weights else None


def improve_adopted(read: Read) -> str | None:
    """The IMPROVE variant adopted: once every variant's seed-0 screen has finished, the one with
    the best validation accuracy if it beats the base setting's seed-0 cell; else None."""
    ipc = IMPROVE["ipc"]
    base = choose(read, [ipc])[f"ipc{ipc}"]["chosen"]
    base_cell = read(_cell_folder(CANDIDATES[base], ipc, 0) / "results.json") if base else None
    scores = []
    for label in IMPROVE["variants"]:
        r = read(_cell_folder(f"{IMPROVE['out']}/{label}", ipc, 0) / "results.json")
        if not r or not base_cell:
            return None
        scores.append((r["val_accuracy"], label))
    best = max(scores, key=lambda s: s[0])  # the first of equal scores
    return best[1] if best[0] > base_cell["val_accuracy"] else None


def improve_candidates(read: Read) -> dict[str, str]:
    """The adopted variant as an extra candidate of :func:`choose` (empty when none is)."""
    label = improve_adopted(read)
    return {f"{label} on the size's setting": f"{IMPROVE['out']}/{label}"} if label else {}


def improve_jobs(cli: Callable[[list[str], Path], int], logs: Path, read: Read) -> list[Callable]:
    """The screen (seed 0 of every variant), then every final seed of the adopted variant; the
    cells not yet finished, on top of the setting RULE chose at IMPROVE's size (none: wait)."""
    ipc = IMPROVE["ipc"]
    pick = choose(read, [ipc])[f"ipc{ipc}"]
    if pick["chosen"] is None:
        return []
    weight = pick["candidates"][pick["chosen"]]["attention_weight"]
    adopted = improve_adopted(read)
    todo = [(label, 0) for label in IMPROVE["variants"]]
    todo += [(adopted, s) for s in plan.FINAL["seeds"][ipc] if adopted and s]
    jobs = []
    for label, seed in todo:
        folder = f"{IMPROVE['out']}/{label}"
        if (_cell_folder(folder, ipc, seed) / "results.json").is_file():
            continue
        a = ["condense", "--method", "datadam", "--ipc", str(ipc), "--seeds", str(seed),
             "--iterations", str(plan.FINAL["iterations"][ipc]), *plan.FINAL["args"],
             "--attention-weight", f"{weight:g}", *IMPROVE["variants"][label],
             "--eval-steps", str(plan.FINAL["judge_steps"][ipc]),
             "--val-images", str(plan.VAL_IMAGES), "--out", str(plan.RUNS / folder)]  # fmt: skip
        jobs.append(lambda a=a, f=logs / f"condense-improve-{label}-{ipc}-{seed}.log": cli(a, f))
    return jobs


def chosen_cells(read: Read, choice: dict) -> dict:
    """Per size, DataDAM's cell at the setting ``choice`` chose (on FINAL's seeds) over every
    seed found, MORE's included (``{"n": 0}`` where nothing was chosen)."""
    out = {}
    for key, pick in choice.items():
        ipc = int(key.removeprefix("ipc"))
        if pick["chosen"] is None:
            out[key] = {"n": 0}
            continue
        folder = pick["candidates"][pick["chosen"]]["folder"]
        cell = plan.final_cells(read, None, Path("."), folder, ["datadam"], [ipc], more=True)
        out[key] = {"folder": folder, **cell[f"datadam/ipc{ipc}"]}
    return out


def more_jobs(cli: Callable[[list[str], Path], int], logs: Path, read: Read,
              extra: dict[str, str] | None = None) -> list[Callable]:  # fmt: skip
    """MORE's cells not yet finished: seed by seed, at each size DataDAM (at the setting RULE
    chose on FINAL's seeds, with that setting's knobs; a size without a choice waits) and DM,
    then every random subset last (its cells only judge)."""
    picks = choose(read, plan.MORE["sizes"], extra)
    first, last = [], []
    for seed in plan.MORE["seeds"]:
        for ipc in sorted(plan.MORE["sizes"], reverse=True):  # the slow size first
            pick = picks[f"ipc{ipc}"]
            dam = pick["candidates"].get(pick["chosen"] or "")
            for m in plan.FINAL["methods"]:
                if m == "datadam" and dam is None:
                    continue
                folder = plan.RUNS / (dam["folder"] if m == "datadam" else "condense-final")
                if (folder / f"condense-{m}-ipc{ipc}-s{seed}" / "results.json").is_file():
                    continue
                a = ["condense", "--method", m, "--ipc", str(ipc), "--seeds", str(seed),
                     "--iterations", str(plan.FINAL["iterations"][ipc]), *_knobs(m, dam),
                     "--eval-steps", str(plan.FINAL["judge_steps"][ipc]),
                     "--val-images", str(plan.VAL_IMAGES), "--out", str(folder)]  # fmt: skip
                job = lambda a=a, f=logs / f"condense-more-{m}-{ipc}-{seed}.log": cli(a, f)  # noqa: E731
                (last if m == "random" else first).append(job)
    return first + last


def _knobs(method: str, dam: dict) -> list[str]:
    """The knobs of a cell beyond FINAL's lengths: DataDAM's chosen setting (``dam``, a candidate
    cell of :func:`choose`) or FINAL's arguments for the other methods."""
    if method != "datadam":
        return [*plan.FINAL["args"]]
    return ["--attention-weight", f"{dam['attention_weight']:g}", "--nets", str(dam["nets"]),
            "--real-batch", str(dam["real_batch"])]  # fmt: skip


def headline(cells: dict, choice: dict, dam_cells: dict | None = None) -> dict:
    """Per size: the random subset, DM and DataDAM at its chosen setting (test accuracy over the
    condensation seeds: its cells in ``dam_cells`` when given, else the candidate's), and
    DataDAM's lead over each of the other two: the difference of the means, the same-seed
    differences, ``separated`` (mean − std of the one above mean + std of the other, both with a
    std) and the one-sided paired t-test of MORE (``p_one_sided``, ``beats``)."""
    table = {}
    for key, pick in choice.items():
        ipc = key.removeprefix("ipc")
        dam = pick["candidates"].get(pick["chosen"] or "", {"n": 0})
        if dam_cells is not None and dam_cells.get(key, {}).get("n"):
            dam = dam_cells[key]
        row = {"random": _brief(cells.get(f"random/ipc{ipc}", {"n": 0})),
               "dm": _brief(cells.get(f"dm/ipc{ipc}", {"n": 0})), "datadam": _brief(dam),
               "datadam_setting": pick["chosen"],
               "datadam_folder": dam.get("folder")}  # fmt: skip
        for other in ("random", "dm"):
            row[f"datadam_minus_{other}"] = _lead(dam, row[other])
        table[key] = row
    return table


_BRIEF = ("n", "mean", "std", "accuracy", "condense_seeds", "val_accuracy", "iterations",
          "judge_steps", "attention_weight", "real_batch", "nets")  # fmt: skip


def _brief(cell: dict) -> dict:
    """The figures of one cell (the whole cell is in the JSON's cells_* sections)."""
    return {k: cell[k] for k in _BRIEF if k in cell}


def _lead(a: dict, b: dict) -> dict | None:
    if not (a.get("n") and b.get("n")):
        return None
    paired = dict(zip(b["condense_seeds"], b["accuracy"], strict=True))
    diffs = [x - paired[s] for s, x in zip(a["condense_seeds"], a["accuracy"], strict=True)
             if s in paired]  # fmt: skip
    spread = a["std"] is not None and b["std"] is not None
    separated = spread and abs(a["mean"] - b["mean"]) > a["std"] + b["std"]
    return {"mean_difference": a["mean"] - b["mean"], "same_seed_differences": diffs,
            "separated": bool(separated), **paired_test(diffs)}  # fmt: skip


def paired_test(diffs: list[float]) -> dict:
    """One-sided paired t-test that the same-seed differences are above 0: ``pairs``,
    ``paired_t``, ``p_one_sided`` (None under 2 pairs, or when the differences are all equal)
    and ``beats`` (p < MORE's alpha)."""
    if len(diffs) < 2 or max(diffs) == min(diffs):
        return {"pairs": len(diffs), "paired_t": None, "p_one_sided": None, "beats": False}
    t = stats.ttest_1samp(diffs, 0.0, alternative="greater")
    p = float(t.pvalue)
    return {"pairs": len(diffs), "paired_t": float(t.statistic), "p_one_sided": p,
            "beats": p < plan.MORE["alpha"]}  # fmt: skip


def improve_table(read: Read, copy_png: Callable[[Path, Path], None] | None = None,
                  out: Path = Path(".")) -> dict:  # fmt: skip
    """The screen (validation accuracy of every variant's seed-0 cell and of the base setting's)
    and the adopted variant's cell over the seeds found; each variant's seed-0 grid is copied to
    out/vision_condense_png/improve-<label>-ipc<n>-s0.png (unless ``copy_png`` is None)."""
    ipc = IMPROVE["ipc"]
    base = choose(read, [ipc])[f"ipc{ipc}"]["chosen"]
    screen = {}
    for label, folder in ([(base, CANDIDATES[base])] if base else []) + [
            (v, f"{IMPROVE['out']}/{v}") for v in IMPROVE["variants"]]:  # fmt: skip
        r = read(_cell_folder(folder, ipc, 0) / "results.json")
        if r and copy_png is not None and label in IMPROVE["variants"]:
            copy_png(_cell_folder(folder, ipc, 0) / "images.png",
                     out / "vision_condense_png" / f"improve-{label}-ipc{ipc}-s0.png")
        screen[label] = {"val_accuracy": r["val_accuracy"] if r else None, "folder": folder,
                         "condense_seconds": r["condense_seconds"] if r else None}  # fmt: skip
    adopted = improve_adopted(read)
    cells = (plan.final_cells(read, None, Path("."), f"{IMPROVE['out']}/{adopted}", ["datadam"],
                              [ipc]) if adopted else {})  # fmt: skip
    return {"size": ipc, "base": base, "variants": IMPROVE["variants"], "screen_seed0": screen,
            "adopted": adopted, "cells": cells}  # fmt: skip


BUDGET = {"ipc": 10, "seed": 0, "iterations": [1000, 2000], "out": "condense-budget"}
"""Longer matching at 10 images per class, condensation seed 0, scored on the held-out slice only
(``--select``: the test set is never read): does DataDAM's lead over DM on validation grow with
the matching budget (the papers run 20,000 iterations)? DataDAM at the setting RULE chose at this
size, every other knob (real batch 32, one judge of FINAL's steps) as in FINAL. Runs
runs/condense-budget/it<N>/ (part ``condense-budget``)."""


def budget_jobs(cli: Callable[[list[str], Path], int], logs: Path, read: Read) -> list[Callable]:
    """DataDAM and DM at every BUDGET length not yet finished, the shorter first (a size without
    a chosen DataDAM setting waits)."""
    ipc, seed = BUDGET["ipc"], BUDGET["seed"]
    pick = choose(read, [ipc])[f"ipc{ipc}"]
    dam = pick["candidates"].get(pick["chosen"] or "")
    if dam is None:
        return []
    jobs = []
    for n in BUDGET["iterations"]:
        folder = plan.RUNS / BUDGET["out"] / f"it{n}"
        for m in ("datadam", "dm"):
            if (folder / f"condense-{m}-ipc{ipc}-s{seed}" / "results.json").is_file():
                continue
            a = ["condense", "--method", m, "--ipc", str(ipc), "--seeds", str(seed),
                 "--iterations", str(n), *_knobs(m, dam),
                 "--eval-steps", str(plan.FINAL["judge_steps"][ipc]),
                 "--val-images", str(plan.VAL_IMAGES), "--select",
                 "--out", str(folder)]  # fmt: skip
            jobs.append(lambda a=a, f=logs / f"condense-budget-{m}-{ipc}-{n}.log": cli(a, f))
    return jobs


def budget_table(read: Read) -> dict:
    """Validation accuracy of DataDAM (chosen setting) and DM at BUDGET's seed and size, per
    matching length: FINAL's (from the final cells) and every BUDGET length finished."""
    ipc, seed = BUDGET["ipc"], BUDGET["seed"]
    pick = choose(read, [ipc])[f"ipc{ipc}"]
    dam = pick["candidates"].get(pick["chosen"] or "")
    folders = {plan.FINAL["iterations"][ipc]: {"datadam": dam["folder"] if dam else None,
                                               "dm": "condense-final"}}  # fmt: skip
    for n in BUDGET["iterations"]:
        folders[n] = {m: f"{BUDGET['out']}/it{n}" for m in ("datadam", "dm")}
    rows = {}
    for n, by_method in folders.items():
        row = {}
        for m, folder in by_method.items():
            cell = plan.RUNS / folder / f"condense-{m}-ipc{ipc}-s{seed}" if folder else None
            r = read(cell / "results.json") if cell else None
            if r:
                row[m] = {"val_accuracy": r["val_accuracy"], "folder": folder,
                          "condense_seconds": r["condense_seconds"],
                          "loss_first": r.get("loss_first"), "loss_last": r.get("loss_last"),
                          "mean_abs_pixel_change_from_start": r["mean_abs_change_from_start"]}
        if len(row) == 2:
            row["datadam_minus_dm"] = row["datadam"]["val_accuracy"] - row["dm"]["val_accuracy"]
        rows[f"iterations{n}"] = row
    return {"size": ipc, "seed": seed, "datadam_setting": pick["chosen"], "rows": rows}
