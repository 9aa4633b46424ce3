"""Held-out perplexity of SmolLM2 conversions under the comparable window protocol.

Each case is scored on the last 10% of the characters of Tiny Shakespeare and WikiText-2 valid
as written, ``windows:512:stride=512`` (:mod:`attnkd.eval.lm_protocol`; teacher 34.74 / 31.22):

- ``teacher``: the SDPA teacher itself (checks the protocol on this machine);
- ``window``, ``hybrid``, ``linear``: converted with no training (feature maps at identity;
  ``--terrace``: the window and hybrid cases take the terraced window);
- ``shared``: the sharing chosen in ``results/smollm2_similarity.json``, no training;
- ``sparse``: top-``--topk`` keys by an untrained rank-8 estimate;
- ``mla``: latent of rank ``--mla-rank`` by activation PCA on 8 blocks of the first 85% of
  Tiny Shakespeare (no held-out text), no recovery;
- ``run:FOLDER``: a saved converted model (``attnkd convert`` writes ``RUN/student``);
- ``ckpt:RUN[:NAME]``: a stage-1 checkpoint of an ``attnkd convert`` run (``RUN/checkpoints/
  NAME``, default ``best``): the teacher converted as ``RUN/config.yaml`` says, mixers loaded
  (a run stopped before its own final evaluation).

Results are written after every case (``--json``, atomic), so a stopped run keeps what it did.

    PYTHONPATH=src python scripts/conversion_ppl.py --cases teacher,window,hybrid \
        --json results/conversion_ppl.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from attnkd.atomic import write_json
from attnkd.convert import ConversionSpec, convert_attention, convert_to_mla, load_converted
from attnkd.eval.lm_protocol import DEFAULT_PROTOCOL, text_as_written, text_perplexity
from attnkd.models.load import freeze, load_causal_lm

TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEXTS = ("tinyshakespeare", "wikitext2")


def _sharing() -> dict[int, int]:
    path = Path(__file__).resolve().parents[1] / "results" / "smollm2_similarity.json"
    return {int(k): v for k, v in json.loads(path.read_text())["chosen_sharing"].items()}


def _calibration(tok, blocks: int = 8, size: int = 512) -> list[dict]:
    """``blocks`` token blocks from the first 85% of Tiny Shakespeare (never held-out text)."""
    text = text_as_written("tinyshakespeare")
    ids = tok(text[: int(0.85 * len(text))], add_special_tokens=False)["input_ids"]
    step = len(ids) // blocks
    return [
        {"input_ids": torch.tensor(ids[i * step : i * step + size])[None],
         "attention_mask": torch.ones(1, size, dtype=torch.long)}
        for i in range(blocks)
    ]  # fmt: skip


def _from_checkpoint(arg: str, teacher) -> tuple[torch.nn.Module, dict]:
    from attnkd.config.io import load_config
    from attnkd.convert.run import spec_from_config
    from attnkd.convert.transfer import TransferModule
    from attnkd.engine.checkpoint import load_checkpoint

    run, _, name = arg.partition(":")
    cfg = load_config(Path(run) / "config.yaml")
    spec = spec_from_config(cfg)
    model = convert_attention(teacher, spec)
    ckpt = load_checkpoint(Path(run) / "checkpoints" / (name or "best"), TransferModule(model))
    step, elapsed, tokens = ckpt.state.step, None, None
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") in ("train", "eval") and event["step"] <= step:
            elapsed = event.get("elapsed_s", elapsed)
        if event.get("event") == "start":
            tokens = event["train"]["batch_size"] * cfg.data.max_length
    minutes = "?" if elapsed is None else f"{elapsed / 60:.0f}"
    budget = f"stage 1: {step} steps of {tokens} tokens, {minutes} min wall (one thread)"
    return model, {**model.attnkd_conversion, "checkpoint": f"{run}:{name or 'best'}",
                   "step": step, "train_elapsed_s": elapsed, "budget": budget}  # fmt: skip


def build(case: str, teacher, tok, args) -> tuple[torch.nn.Module, dict]:
    """The model of one case and what it is."""
    if case == "teacher":
        return teacher, {"kind": "teacher"}
    if case.startswith("ckpt:"):
        return _from_checkpoint(case[5:], teacher)
    if case.startswith("run:"):
        model = load_converted(case[4:])
        return model, dict(model.attnkd_conversion)
    if case == "mla":
        model = convert_to_mla(teacher, args.mla_rank, calibration=_calibration(tok))
        return model, dict(model.attnkd_conversion)
    windowed = case in ("window", "hybrid")
    spec = ConversionSpec(kind=case, window=args.window, topk=args.topk, rank=8,
                          terrace=args.terrace and windowed,
                          sinks=args.sinks if windowed else 0)  # fmt: skip
    if case == "shared":
        spec.share = _sharing()
    model = convert_attention(teacher, spec)
    return model, dict(model.attnkd_conversion)


def _key(case: str, args) -> str:
    """The results key of a case: its kind with the settings that vary."""
    key = case
    if case in ("window", "hybrid"):
        key = f"{case}-w{args.window}" + ("-terrace" if args.terrace else "")
        key += f"-sinks{args.sinks}" if args.sinks else ""
    elif case == "sparse":
        key = f"sparse-top{args.topk}"
    elif case == "mla":
        key = f"mla-r{args.mla_rank}"
    return key if args.tail == 0.1 else f"{key}@tail{args.tail:g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="teacher,window,hybrid,linear,shared,mla,sparse")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--sinks", type=int, default=0, help="window/hybrid: attention sinks")
    p.add_argument(
        "--tail",
        type=float,
        default=0.1,
        help="share of each text held out (0.1 = the protocol; less: a quick screen)",
    )
    p.add_argument("--terrace", action="store_true", help="window/hybrid: terraced window")
    p.add_argument("--topk", type=int, default=64)
    p.add_argument("--mla-rank", type=int, default=192)
    p.add_argument("--texts", default=",".join(TEXTS))
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write (and update after each case) this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_causal_lm(TEACHER)
    teacher, tok = freeze(loaded.model), loaded.tokenizer
    command = "python scripts/conversion_ppl.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in vars(args).items() if v is not None and v is not False)  # fmt: skip
    out: dict = {"command": command, "teacher": TEACHER, "protocol": args.protocol,
        "threads": args.threads, "results": {},
        "held_out": "last 10% of each file's characters as written"}  # fmt: skip
    if args.json and Path(args.json).exists():  # keep cases measured by an earlier call
        out["results"] = json.loads(Path(args.json).read_text()).get("results", {})
    for case in args.cases.split(","):
        t0 = time.time()
        model, what = build(case, teacher, tok, args)
        freeze(model)
        row = {"conversion": what, "command": command, "budget": what.pop("budget", "none")}
        for text in args.texts.split(","):
            r = text_perplexity(model, tok, text, args.protocol, tail=args.tail)
            row[text] = {k: r[k] for k in ("perplexity", "nll", "scored_tokens", "windows")}
            print(f"{case:>10} {text:>16} ppl {r['perplexity']:8.2f}", flush=True)
        row["seconds"] = round(time.time() - t0, 1)
        out["results"][_key(case, args)] = row
        if args.json:
            write_json(args.json, out)


if __name__ == "__main__":
    main()
