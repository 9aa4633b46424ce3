"""Kill-and-resume trials: SIGKILL a tiny training run at random steps, resume each time, and
compare the final weights bit for bit with an uninterrupted run.

    PYTHONPATH=src python scripts/kill_resume.py --trials 3 --json results/kill_resume.json

Each trial is one run of ``--steps`` steps (a checkpoint every step, the newest two kept) killed
``--kills`` times at random moments (seeded per trial), often in the middle of a save.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))

import torch  # noqa: E402
from kill_worker import finish, kill_and_resume, start, weights  # noqa: E402

from attnkd.atomic import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ref_dir = Path(tmp) / "full"
        finish(start(ref_dir, args.steps))
        ref = weights(ref_dir)
        trials = []
        for seed in range(args.trials):
            run = Path(tmp) / f"cut-{seed}"
            killed = kill_and_resume(run, args.steps, args.kills, seed)
            got = weights(run)
            equal = got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
            trials.append({"seed": seed, "killed_after_steps": killed, "bitwise_equal": equal})
            print(f"trial {seed}: killed after steps {killed}; bitwise equal: {equal}")
    out = {
        "steps": args.steps,
        "kills_per_trial": args.kills,
        "trials": trials,
        "total_kills": sum(len(t["killed_after_steps"]) for t in trials),
        "all_equal": all(t["bitwise_equal"] for t in trials),
    }
    print(f"{out['total_kills']} kills in {len(trials)} trials; all equal: {out['all_equal']}")
    if args.json:
        write_json(args.json, out)
    return 0 if out["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
