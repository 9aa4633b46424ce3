"""The per-kind conversion table of SmolLM2-135M-Instruct (``results/conversion_table.json``).

Reads what was measured, never types a figure in: perplexities from
``results/conversion_ppl.json`` (``scripts/conversion_ppl.py``, comparable window protocol),
the teacher's from ``results/lm_perplexity_protocol.json``, speeds from the ``summary`` of
``results/conversion_speed_smollm2.json`` (``bench/conversion_speed.py``). A kind with no
measurement gets null and the reason given in ``ROWS``. Rerun after either script:

    python scripts/conversion_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
TEXTS = ("tinyshakespeare", "wikitext2")
SPEED_COMMAND = (
    "PYTHONPATH=src python bench/conversion_speed.py --skip-encoder --window 128 --terrace "
    "--sinks 4 --kinds hybrid,window --threads 1 --sizes 512,2048,8192,16384 --repeats 1 "
    "--steps 32 --json results/conversion_speed_smollm2.json"
)

ROWS = [
    {"kind": "hybrid", "what": "terraced window of 128-key tiles + 4 attention sinks + Hedgehog "
     "linear for older keys; stage 1 (attention transfer, output MSE, all layers at once, "
     "teacher layer inputs)", "recipe": "recipes/smollm2-hybrid.yaml",
     "ppl": "ckpt:runs/smollm2-hybrid", "speed": "SmolLM2-135M/hybrid-w128-terrace-sinks4",
     "layer_speed": "conversion_speed_layer_w128.json"},
    {"kind": "hybrid (LoLCATs as written, no training)", "what": "sliding window 64 + Hedgehog "
     "linear, no sinks, feature maps at identity", "recipe": None, "ppl": "hybrid-w64",
     "speed": None, "budget": "none", "speed_reason": "the speed check times the recipe's "
     "window; sliding 64 one-layer figures of an earlier session: "
     "results/conversion_speed_layer.json"},
    {"kind": "window", "what": "terraced softmax window of 128-key tiles + 4 attention sinks, "
     "nothing linear (no new parameters)", "recipe": None, "ppl": "window-w128-terrace-sinks4",
     "speed": "SmolLM2-135M/window-w128-terrace-sinks4", "budget": "none (nothing to train)"},
    {"kind": "linear", "what": "Hedgehog linear attention only, feature maps at identity",
     "recipe": None, "ppl": "linear", "speed": "SmolLM2-135M/linear", "budget": "none"},
    {"kind": "shared", "what": "EchoAtt sharing 5<-4, 6<-3, 7<-3, 8<-3, 24<-23, 26<-25 "
     "(results/smollm2_similarity.json), no KD", "recipe": None, "ppl": "shared",
     "speed": None, "budget": "none"},
    {"kind": "sparse", "what": "top-64 keys by an untrained rank-8 estimate", "recipe":
     "recipes/smollm2-sparse.yaml", "ppl": "sparse-top64", "speed": None, "budget": "none"},
    {"kind": "mla", "what": "GQA -> latent KV of rank 192 (half the cache) by activation PCA "
     "on 8 blocks of the first 85% of Tiny Shakespeare, no recovery",
     "recipe": "recipes/smollm2-mla.yaml", "ppl": "mla-r192", "speed": None, "budget": "none"},
]  # fmt: skip
NOT_MEASURED = {
    "ppl": "not measured this session (CPU share went to the hybrid's stage 1 and its "
    "evaluation); `python scripts/conversion_ppl.py --cases {case}` measures it",
    "speed": "not in the speed bench: softmax over all keys remains (quadratic like the "
    "teacher); its gain is the cache (mla: latent) or nothing at long context (shared, sparse)",
    "pending": "whole-model bench not run yet: " + SPEED_COMMAND,
}


def _load(name: str) -> dict:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else {}


def _layer_speed(name: str) -> dict | None:
    """One decoder layer at the longest context of a ``--per-layer`` bench JSON."""
    doc = _load(name)
    recs = doc.get("records", [])
    if not recs:
        return None
    top = max(r["context"] for r in recs)
    fwd = next(r for r in recs if r["context"] == top and r["kind"] == "forward")
    dec = next(r for r in recs if r["context"] == top and r["kind"] == "decode")
    return {"context": top, "forward_cpu_speedup": fwd["cpu_speedup"],
            "forward_speedup": fwd["speedup"], "decode_cpu_speedup": dec["cpu_speedup"],
            "decode_whole_model_cpu_speedup": dec["whole_model_cpu_speedup"],
            "cache_ratio": dec["memory_ratio"], "source": f"results/{name}",
            "command": doc["meta"]["command"], "note": doc["meta"]["note"]}  # fmt: skip


SPEED_FILES = ("conversion_speed_smollm2.json", "conversion_speed_smollm2_linear.json")


def build() -> dict:
    ppl = _load("conversion_ppl.json").get("results", {})
    teacher = _load("lm_perplexity_protocol.json").get("results", {}).get("teacher", {})
    speed, speed_command = {}, {}
    for name in SPEED_FILES:  # each bench run: {"meta": {"command"}, "summary": {model: ...}}
        doc = _load(name)
        for model, summary in doc.get("summary", {}).items():
            speed[model] = summary
            speed_command[model] = doc["meta"]["command"]
    rows = []
    for spec in ROWS:
        row = {k: spec.get(k) for k in ("kind", "what", "recipe")}
        got = ppl.get(spec["ppl"])
        if got:
            row["perplexity"] = {t: got[t]["perplexity"] for t in TEXTS if t in got}
            row["ratio_to_teacher"] = {t: got[t]["perplexity"] / teacher[t]["perplexity"]
                                       for t in TEXTS if t in got and t in teacher}  # fmt: skip
            row["perplexity_command"] = got.get("command")
            row["budget"] = got.get("budget", spec.get("budget"))
            row["conversion"] = got.get("conversion")
        else:
            row["perplexity"] = None
            row["perplexity_reason"] = NOT_MEASURED["ppl"].format(case=spec["ppl"])
            row["budget"] = spec.get("budget")
        s = speed.get(spec["speed"]) if spec["speed"] else None
        row["speed"] = s
        if s:
            row["speed_command"] = speed_command[spec["speed"]]
        else:
            row["speed_reason"] = (
                spec.get("speed_reason") or NOT_MEASURED["pending" if spec["speed"] else "speed"]
            )
        if spec.get("layer_speed"):
            row["speed_one_layer"] = _layer_speed(spec["layer_speed"])
        rows.append(row)
    return {
        "note": "SmolLM2-135M-Instruct conversions. Perplexity: last 10% of the characters of "
        "each text as written, windows:512:stride=512 (scripts/conversion_ppl.py); speed: "
        "whole model, logits of the last position, against the SDPA teacher "
        "(bench/conversion_speed.py summary). Built by scripts/conversion_table.py.",
        "teacher": {
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "perplexity": {t: teacher[t]["perplexity"] for t in TEXTS if t in teacher},
            "source": "results/lm_perplexity_protocol.json",
        },  # fmt: skip
        "speed_meta": {name: _load(name).get("meta") for name in SPEED_FILES},
        "rows": rows,
        "screens": _load("conversion_ppl_screen.json").get("results", {}),
        "screens_note": "quick screens on the last 3% of Tiny Shakespeare only (teacher row "
        "included), used to choose the window and sinks; not the protocol",
        "minilm_l6": _load("conversion_table.json").get("minilm_l6", []),
    }


def main() -> None:
    from attnkd.atomic import write_json

    table = build()
    write_json(RESULTS / "conversion_table.json", table)
    for r in table["rows"]:
        p = r["perplexity"] or {}
        s = r["speed"] or {}
        fwd, dec = s.get("forward_speedup"), s.get("decode_speedup")
        speed = (f"forward x{fwd:.2f}  decode x{dec:.2f}" if fwd and dec
                 else "speed not measured")
        print(f"{r['kind']:>30}  ppl {p.get('tinyshakespeare', float('nan')):7.2f} / "
              f"{p.get('wikitext2', float('nan')):7.2f}  {speed}")  # fmt: skip


if __name__ == "__main__":
    main()
