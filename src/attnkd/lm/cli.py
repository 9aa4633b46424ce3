"""Subcommands for teacher-made LM data: ``cache-teacher``, ``generate-data`` and ``dpo``.

Registered on the main parser by :func:`add_lm_commands`; each takes a recipe (file or shipped
name) and ``key=value`` overrides like ``attnkd distill``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_lm_commands"]


_LOAD = None
"""The main CLI's recipe loader (``args -> DistillConfig``), given to :func:`add_lm_commands`."""


def _cfg(args):
    assert _LOAD is not None, "add_lm_commands(sub, load) was not called"
    return _LOAD(args)


def cmd_cache_teacher(args) -> int:
    from attnkd.lm.cache_run import run_cache_teacher

    info = run_cache_teacher(
        _cfg(args), args.top_k, args.out, dtype=args.dtype, batch_size=args.batch_size,
        overwrite=args.overwrite, progress=not args.no_progress,
    )  # fmt: skip
    print(
        f"teacher cache {info['path']}: {info['tokens']} tokens, k={info['k']}, "
        f"{info['bytes_per_token']:.1f} bytes/token ({info['target_bytes_per_token']:.1f} for "
        f"the targets), teacher pass {info['teacher_seconds']:.1f}s"
    )
    print(f"train from it with: teacher.cache={info['path']} (and losses[i].top_k={info['k']})")
    return 0


def cmd_generate_data(args) -> int:
    from attnkd.lm.seqkd import GenerationSettings, run_generate_data

    settings = GenerationSettings(
        samples=args.samples, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
    )  # fmt: skip
    info = run_generate_data(_cfg(args), settings, args.out, overwrite=args.overwrite)
    print(f"{info['samples']} teacher samples ({info['generated_tokens']} generated tokens, "
          f"{info['seconds']:.1f}s) in {info['path']}")  # fmt: skip
    print(f"train on them with: data.train_sources=[seqkd:{info['path']}, ...]")
    return 0


def cmd_dpo(args) -> int:
    from pathlib import Path

    from attnkd.lm.dpo_stage import run_dpo_on_recipe, run_dpo_on_run

    items = args.items
    if items and Path(items[0]).is_dir():
        res = run_dpo_on_run(Path(items[0]), items[1:], json_path=args.json)
    else:
        res = run_dpo_on_recipe(_cfg(args), json_path=args.json)
    b, a = res["before"], res["after"]
    print(
        f"held-out perplexity {b['perplexity']:.2f} -> {a['perplexity']:.2f}; teacher-judged "
        f"win rate of the DPO student over the stage-start student {res['win_rate']:.3f} "
        f"({res['judged_prompts']} prompts)"
    )
    print(f"stage folder: {res['run_dir']}")
    return 0


def add_lm_commands(sub: argparse._SubParsersAction, load) -> None:
    """Register the subcommands; ``load(args)`` turns ``args.items`` (recipe, then key=value
    overrides) into a config the way ``attnkd distill`` does."""
    global _LOAD
    _LOAD = load
    items = {
        "nargs": "*",
        "metavar": "CONFIG|key=value",
        "help": "causal_lm recipe (file or shipped name), then key=value overrides",
    }

    c = sub.add_parser("cache-teacher", help="store the teacher's top-k log-probs per token")
    c.add_argument("items", **items)
    c.add_argument("--top-k", type=int, required=True, help="tokens kept per position")
    c.add_argument("--out", default=None, help="cache folder (default OUTPUT_DIR/NAME-cache-kK)")
    c.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"], help="log-prob storage")
    c.add_argument("--batch-size", type=int, default=8, help="blocks per teacher forward")
    c.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(fn=cmd_cache_teacher)

    g = sub.add_parser("generate-data", help="teacher samples as a seqkd:PATH data source")
    g.add_argument("items", **items)
    g.add_argument("--out", default=None, help="folder (default OUTPUT_DIR/NAME-seqkd)")
    g.add_argument("--samples", type=int, default=64, help="sequences to generate")
    g.add_argument("--prompt-tokens", type=int, default=16, help="prompt taken from train blocks")
    g.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sample")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 = off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    g.set_defaults(fn=cmd_generate_data)

    d = sub.add_parser("dpo", help="preference stage (DPO, teacher as reference) on a run")
    d.add_argument(
        "items",
        nargs="+",
        metavar="RUN|CONFIG [key=value]",
        help="a finished run folder or a recipe with a dpo: section, then overrides",
    )
    d.add_argument("--json", default=None, help="also write the results here")
    d.set_defaults(fn=cmd_dpo)
