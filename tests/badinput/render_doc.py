"""Render docs/bad-input.md's table from messages recorded by the bad-input tests:

ATTNKD_BADINPUT_RECORD=/tmp/rec.jsonl python -m pytest tests/badinput -q
python tests/badinput/render_doc.py /tmp/rec.jsonl > /tmp/table.md
"""

from __future__ import annotations

import json
import sys

GROUPS = ("config", "data", "models", "resources", "caches", "cli")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(path: str) -> None:
    rows = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows[row["id"]] = row
    print("| # | case | input | what the user sees (stderr, exit status 2) |")
    print("|---|---|---|---|")
    ordered = sorted(rows.values(), key=lambda r: GROUPS.index(r["group"]))
    for i, r in enumerate(ordered, start=1):
        argv = " ".join(r["argv"]).replace(" --no-progress", "")
        argv = argv.replace(" output_dir=<tmp>/runs name=tiny", "")
        print(f"| {i} | {r['group']}: {_cell(r['what'])} (`{r['id']}`) | `{_cell(argv)}` | "
              f"`{_cell(r['message'])}` |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
