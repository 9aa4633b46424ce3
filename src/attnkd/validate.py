"""Semantic validation of a :class:`DistillConfig` before any weights load or training starts.

Type and key checks happen when the YAML is read (:mod:`attnkd.config.io`); here the values are
checked against each other, the data on disk and the models' configs (``config.json`` only):
layer indices in range, head counts that divide into relation heads, widths that need a
projector, missing files. Every problem is a :class:`ConfigError` naming the key.
It sits above the packages it checks (config, data, losses, models, students), like
:mod:`attnkd.distill`, so none of them depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from attnkd.config.schema import DistillConfig
from attnkd.engine.device import check_train_settings
from attnkd.errors import AttnkdError, ConfigError, DataError
from attnkd.models.adapters import AttentionGeometry, adapter_for, geometry

IMPLS = ("auto", "naive", "chunked")
ATTN_IMPLS = ("sdpa", "eager")
EVAL_TASKS = ("stsb:dev", "stsb:val")
TASKS = ("sentence", "causal_lm", "image_classification", "sequence_classification")
VOCAB_KINDS = ("fkl", "rkl", "jsd", "tvd")
CONVERT_KINDS = ("linear", "window", "hybrid", "shared", "sparse", "mla")
CONVERT_LOSSES = ("mse", "ce", "ce+mse", "kl")
CONVERT_STAGES = ("transfer", "align", "e2e")


@dataclass
class Geometries:
    teacher: AttentionGeometry
    student: AttentionGeometry
    student_layers: list[int] | None


SELECT_METRICS = {"causal_lm": ("", "perplexity", "alpha", "alpha_greedy")}
"""train.select_metric values a task takes ('' = the task's default)."""


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def validate_static(cfg: DistillConfig) -> None:
    """Checks that need neither models nor data."""
    t, s, d = cfg.train, cfg.student, cfg.data
    _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _check(t.max_steps >= 0, "train.max_steps", f"must be >= 0 (0: no training), got {t.max_steps}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _check(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}")
    _check(
        0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}"
    )
    _check(t.eval_every >= 1, "train.eval_every", "must be >= 1")
    _check(t.save_every >= 1, "train.save_every", "must be >= 1")
    check_train_settings(t)  # device, precision, teacher dtype, non-finite policy (engine's)
    _check(d.max_length >= 8, "data.max_length", f"must be >= 8, got {d.max_length}")
    _check(cfg.task in TASKS, "task", f"expected one of {TASKS}, got '{cfg.task}'")
    _check(0 < d.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")
    _check(0 < d.eval_fraction < 1, "data.eval_fraction", "must be in (0, 1)")
    _check(d.val_fraction + d.eval_fraction < 1, "data.eval_fraction",
           "data.val_fraction + data.eval_fraction must leave blocks to train on")  # fmt: skip
    _check(d.bad_rows in ("error", "skip"), "data.bad_rows", "expected 'error' or 'skip'")
    if cfg.task == "sequence_classification":
        from attnkd.data.cls_splits import EVAL_SPLITS, SELECT_SPLITS

        evals, selects = EVAL_SPLITS, SELECT_SPLITS
    else:
        evals = selects = EVAL_TASKS
    _check(d.eval_task in evals, "data.eval_task", f"expected one of {evals}")
    _check(d.select_task in selects, "data.select_task", f"expected one of {selects}")
    _check(d.select_task != d.eval_task, "data.select_task",
           f"'{d.select_task}' is also data.eval_task; select on 'stsb:val'")  # fmt: skip
    _check(bool(d.train_sources), "data.train_sources", "needs at least one source")
    _check(t.select_metric in SELECT_METRICS.get(cfg.task, ("",)), "train.select_metric",
           f"task '{cfg.task}' selects by one of {SELECT_METRICS.get(cfg.task, ('',))} "
           f"('' = its own), got '{t.select_metric}'")  # fmt: skip
    _check(0.0 <= d.on_policy <= 1.0, "data.on_policy", f"must be in [0, 1], got {d.on_policy}")
    _check(d.on_policy == 0.0 or cfg.task == "causal_lm", "data.on_policy",
           "on-policy rows are generated for task 'causal_lm' only")  # fmt: skip
    _check(d.on_policy == 0.0 or 1 <= d.on_policy_prefix < d.max_length, "data.on_policy_prefix",
           f"must be in [1, {d.max_length - 1}] (data.max_length - 1), got "
           f"{d.on_policy_prefix}")  # fmt: skip
    _check(not (cfg.teacher.cache and t.select_metric.startswith("alpha")), "train.select_metric",
           "alpha needs the live teacher's logits; a run with teacher.cache never runs the "
           "teacher: select by perplexity ('') or drop teacher.cache")  # fmt: skip
    _check(d.on_policy == 0.0 or not cfg.teacher.cache, "data.on_policy",
           "on-policy rows need the live teacher to score them; teacher.cache holds targets for "
           "the fixed text only: set one or the other")  # fmt: skip
    _check(cfg.teacher.attn_implementation in ATTN_IMPLS, "teacher.attn_implementation",
           f"expected one of {ATTN_IMPLS}")  # fmt: skip
    _check(s.attn_implementation in ATTN_IMPLS, "student.attn_implementation",
           f"expected one of {ATTN_IMPLS}")  # fmt: skip
    _check(bool(cfg.losses) or bool(cfg.teachers) or bool(cfg.convert.kind), "losses",
           "needs at least one loss term")  # fmt: skip
    _validate_convert(cfg)
    from attnkd.tasks.sequence_classification_ddk import check_mixture

    check_mixture(cfg)  # data.mask_ratio, data.mixture* and the terms that need them
    from attnkd.losses.terms import TERMS

    for i, term in enumerate(cfg.losses):
        key = f"losses[{i}]"
        if term.name not in TERMS:
            raise ConfigError(
                f"{key}.name", f"unknown loss '{term.name}'; known: {', '.join(TERMS)}"
            )
        _check(term.impl in IMPLS, f"{key}.impl", f"expected one of {IMPLS}")
        _check(term.weight >= 0, f"{key}.weight", "must be >= 0")
        _check(term.temperature > 0, f"{key}.temperature", "must be > 0")
        _check(term.kind in VOCAB_KINDS, f"{key}.kind", f"expected one of {VOCAB_KINDS}")
        _check(0 <= term.beta <= 1, f"{key}.beta", f"must be in [0, 1], got {term.beta}")
        _check(term.top_k is None or term.top_k >= 1, f"{key}.top_k", "must be >= 1")
    if cfg.teacher.cache:  # an offline teacher cache: its manifest against the loss terms
        from attnkd.data.cache_match import check_cache_config

        check_cache_config(cfg)
    if s.init == "teacher" and not s.layers and not s.layer_rule and not cfg.convert.kind:
        raise ConfigError("student.layers", "give a list of teacher layers or student.layer_rule")
    if s.layers and s.layer_rule:
        raise ConfigError(
            "student.layer_rule",
            f"give student.layers ({s.layers}) or student.layer_rule ('{s.layer_rule}'), not both",
        )


def validate_data(cfg: DistillConfig) -> None:
    """Every training source and the evaluation split can be read (names file and line)."""
    from attnkd.data.benchmarks import read_stsb
    from attnkd.data.sources import load_source

    if cfg.task == "sequence_classification":  # labelled splits of one data set
        from attnkd.tasks.sequence_classification import validate_data as validate_cls

        return validate_cls(cfg)
    total = 0
    for i, spec in enumerate(cfg.data.train_sources):
        try:
            rows = load_source(spec, cfg.data.data_dir, bad_rows=cfg.data.bad_rows)
        except DataError as err:
            raise ConfigError(f"data.train_sources[{i}]", str(err)) from err
        if not rows:
            where = rows.stats.path or spec
            raise ConfigError(f"data.train_sources[{i}]", f"{where}: no sentences in it (empty?)")
        total += len(rows)
    if cfg.task != "sentence":  # the LM task holds out blocks of its own training text
        return
    if cfg.data.max_sentences is not None:
        total = min(total, cfg.data.max_sentences)
    _check(total >= cfg.train.batch_size, "train.batch_size",
           f"{cfg.train.batch_size} is more than the {total} training sentences of "
           f"data.train_sources: lower train.batch_size or add data")  # fmt: skip
    for key in ("eval_task", "select_task"):
        task = getattr(cfg.data, key)
        try:
            read_stsb("dev" if task == "stsb:dev" else "train", cfg.data.data_dir)
        except DataError as err:
            raise ConfigError(f"data.{key}", str(err)) from err
    from attnkd.tasks.sentence import eval_splits, held_out_files

    eval_splits(cfg)  # the selection split shares no sentence with the evaluation split
    held_out_files(cfg)  # every data.exclude_files item is readable


def validate_models(cfg: DistillConfig) -> Geometries:
    """Check layers, heads and widths against the models' ``config.json``."""
    from attnkd.losses.terms import TERMS, TermError
    from attnkd.models.load import load_config
    from attnkd.students.build import select_layers

    try:
        tcfg = load_config(cfg.teacher.name)
        family = adapter_for(tcfg.model_type)
        _check_folder(cfg.teacher.name, tokenizer=True)
    except (AttnkdError, ValueError) as err:  # ValueError: no adapter for this model family
        raise ConfigError("teacher.name", str(err)) from err
    _check_positions(cfg.data.max_length, tcfg, "teacher", cfg.teacher.name)
    if family.causal != (cfg.task == "causal_lm"):
        kind = "a decoder (causal LM)" if family.causal else "an encoder"
        fits = "causal_lm" if family.causal else "sentence' or 'sequence_classification"
        raise ConfigError(
            "task", f"'{cfg.task}' does not fit the teacher, {kind} ({family.family}): use '{fits}'"
        )
    tg = geometry(tcfg)
    s = cfg.student
    layers = None
    if cfg.convert.kind:  # the student is the teacher with converted attention
        _check(family.family in ("bert", "llama"), "teacher.name",
               f"conversion supports BERT and Llama families, not {family.family}")  # fmt: skip
        _check(cfg.convert.kind != "mla" or family.family == "llama", "convert.kind",
               "'mla' needs a Llama-family decoder (grouped keys and values)")  # fmt: skip
        for i in cfg.convert.layers or []:
            _check(-tg.num_layers <= i < tg.num_layers, "convert.layers",
                   f"layer {i} out of range for a teacher with {tg.num_layers} layers")  # fmt: skip
        sg = tg
    elif s.init == "teacher":
        try:
            layers = select_layers(tg.num_layers, s.layers, s.layer_rule)
        except (ValueError, IndexError) as err:
            raise ConfigError(
                "student.layers" if s.layers else "student.layer_rule", str(err)
            ) from err
        width = s.hidden_size or tg.hidden_size
        heads = s.num_heads or tg.num_heads
        _check(width % heads == 0, "student.num_heads",
               f"student width {width} is not divisible by {heads} heads")  # fmt: skip
        narrowed = s.hidden_size is not None or s.num_heads is not None
        # build_student keeps the teacher's key/value heads unless attention is full (MHA)
        kv = heads if tg.num_kv_heads == tg.num_heads else tg.num_kv_heads
        msg = f"{heads} query heads do not divide into the teacher's {kv} key/value heads"
        _check(heads % kv == 0, "student.num_heads", msg)
        head_dim = width // heads if narrowed else tg.head_dim
        sg = AttentionGeometry(
            len(layers), width, heads, kv, head_dim, causal=tg.causal, vocab_size=tg.vocab_size
        )
        if cfg.train.freeze_embeddings and width != tg.hidden_size:
            raise ConfigError(
                "train.freeze_embeddings",
                f"the student's width {width} differs from the teacher's {tg.hidden_size}, so its "
                "embeddings are freshly initialised (not inherited); freezing them would keep "
                "random vectors: set train.freeze_embeddings: false",
            )
    else:
        try:
            scfg = load_config(s.init)
            adapter_for(scfg.model_type)
            _check_folder(s.init, tokenizer=False)
        except (AttnkdError, ValueError) as err:
            raise ConfigError("student.init", str(err)) from err
        sg = geometry(scfg)
        _check_positions(cfg.data.max_length, scfg, "student", s.init)
        _check_same_tokens(cfg, tcfg, scfg)
    for i, term in enumerate(cfg.losses):
        key = f"losses[{i}]"
        try:
            TERMS.get(term.name).cls(term, tg, sg)
        except IndexError as err:
            which = "teacher_layer" if "teacher" in str(err) else "student_layer"
            raise ConfigError(f"{key}.{which}", str(err)) from err
        except TermError as err:
            raise ConfigError(f"{key}.{err.field}", str(err)) from err
    return Geometries(tg, sg, layers)


def _check_folder(name: str, tokenizer: bool) -> None:
    """A local (or cached packaged) model folder has weights (and a tokenizer) that load."""
    from attnkd.models.hub import check_model_folder, resolve_model_path

    resolved = resolve_model_path(name)
    if resolved.source != "hub":
        check_model_folder(resolved.path, name, tokenizer=tokenizer)


def position_limit(config) -> int | None:
    """Longest sequence a model's position embeddings allow (None if the config gives none).

    RoBERTa-style families (MPNet, RoBERTa) start positions after the padding index, so
    ``max_position_embeddings - (pad_token_id + 1)`` positions are usable."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is None:
        return None
    if config.model_type in ("mpnet", "roberta", "xlm-roberta", "camembert"):
        return int(limit) - (int(getattr(config, "pad_token_id", 1) or 0) + 1)
    return int(limit)


def _check_positions(max_length: int, config, who: str, name: str) -> None:
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise ConfigError(
            "data.max_length",
            f"{max_length} tokens is more than the {who} '{name}' allows ({limit} positions, "
            f"{config.model_type}): set data.max_length <= {limit}",
        )


def _check_same_tokens(cfg: DistillConfig, tcfg, scfg) -> None:
    """One batch of token ids feeds both models: the student must share the teacher's
    vocabulary (size, and the token list itself where the student ships a tokenizer)."""
    t_name, s_name = cfg.teacher.name, cfg.student.init
    tv, sv = getattr(tcfg, "vocab_size", None), getattr(scfg, "vocab_size", None)
    if tv is not None and sv is not None and tv != sv:
        raise ConfigError(
            "student.init",
            f"vocabulary mismatch: teacher '{t_name}' has {tv} tokens, student '{s_name}' {sv}; "
            "both models read the teacher's token ids, so the student must use its tokenizer",
        )
    from attnkd.models.hub import vocabulary_fingerprint

    tf, sf = vocabulary_fingerprint(t_name), vocabulary_fingerprint(s_name)
    if tf is not None and sf is not None and tf != sf:
        raise ConfigError(
            "student.init",
            f"tokenizer mismatch: teacher '{t_name}' (vocab hash {tf[:12]}) and student "
            f"'{s_name}' (vocab hash {sf[:12]}) have the same size but different tokens; both "
            "models read the teacher's token ids, so the student must use its tokenizer",
        )


def validate_output(cfg: DistillConfig) -> None:
    """The run folder can be created and written (checked before anything is loaded)."""
    import os

    run_dir = Path(cfg.output_dir) / cfg.name
    probe = run_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError("output_dir", f"{probe} is a file; expected a folder for runs")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError("output_dir", f"cannot write the run folder {run_dir}: {probe} is "
                          "not writable (choose another output_dir)")  # fmt: skip


def _validate_convert(cfg: DistillConfig) -> None:
    """The ``convert`` section (attention conversion, ``attnkd convert``)."""
    c = cfg.convert
    if not c.kind:
        return
    _check(c.kind in CONVERT_KINDS, "convert.kind", f"expected one of {CONVERT_KINDS}")
    _check(c.loss in CONVERT_LOSSES, "convert.loss", f"expected one of {CONVERT_LOSSES}")
    for stage in c.stages:
        _check(stage in CONVERT_STAGES, "convert.stages", f"expected items of {CONVERT_STAGES}")
    _check(c.e2e_params in ("attention", "mixer"), "convert.e2e_params",
           "expected 'attention' or 'mixer'")  # fmt: skip
    if c.kind in ("window", "shared", "mla") and cfg.train.max_steps and "transfer" in c.stages:
        raise ConfigError(
            "convert.stages",
            f"'{c.kind}' has no new parameters for stage 1: drop 'transfer' or train.max_steps=0",
        )
    if "ce" in c.loss and c.kind != "linear":
        raise ConfigError("convert.loss", "'ce' needs a purely linear student (kind: linear)")
    if (c.loss == "kl") != (c.kind == "sparse") and "transfer" in c.stages:
        raise ConfigError("convert.loss", "'kl' (estimated attention) goes with kind: sparse")
    if c.kind == "shared":
        _check(bool(c.share), "convert.share", "kind 'shared' needs share: {layer: source}")
    if c.kind == "sparse":
        _check(c.topk >= 1, "convert.topk", f"must be >= 1, got {c.topk}")
        _check(c.rank >= 1, "convert.rank", f"must be >= 1, got {c.rank}")
    _check(c.kind == "linear" or c.window >= 1, "convert.window", f"must be >= 1, got {c.window}")
    _check(c.chunk is None or c.chunk >= 1, "convert.chunk", f"must be >= 1, got {c.chunk}")
    _check(not c.terrace or (c.kind in ("window", "hybrid") and c.chunk in (None, c.window)),
           "convert.terrace", "needs kind window or hybrid and chunk = window")  # fmt: skip
    _check(c.sinks == 0 or (c.kind in ("window", "hybrid")
                            and 0 < c.sinks <= (c.chunk or c.window)),
           "convert.sinks", "needs kind window or hybrid and 0 < sinks <= chunk")  # fmt: skip
    _validate_lora(c.lora)


def _validate_lora(lora) -> None:
    """``convert.lora`` (stage 3 through adapters; a run without an 'e2e' stage ignores it, so
    a staged run may set it once at the top level); whether the targets exist is checked on
    the converted model (:func:`attnkd.convert.lora.lora_modules`)."""
    if lora.rank == 0:
        return
    _check(lora.rank >= 1, "convert.lora.rank", f"must be >= 1 (0 = no adapters), got {lora.rank}")
    _check(lora.alpha > 0, "convert.lora.alpha", f"must be > 0, got {lora.alpha}")
    _check(0.0 <= lora.dropout < 1.0, "convert.lora.dropout",
           f"must be in [0, 1), got {lora.dropout}")  # fmt: skip
    names = bool(lora.targets) and all(isinstance(t, str) and t for t in lora.targets)
    _check(names, "convert.lora.targets", "expected a non-empty list of names, e.g. [q_proj]")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError("convert.lora", "needs peft (pip install 'attnkd[lm]')") from None


def _teacher_stand_in(cfg: DistillConfig, _seen: tuple[str, ...] = ()) -> DistillConfig:
    """``cfg`` itself, or, when ``teacher.name`` is a folder a ``teacher.recipe`` stage will
    export (not there yet), ``cfg`` with the model that stage starts from as the teacher: the
    exported teacher has its heads and widths, so the student checks hold for it. A stage whose
    own teacher is another stage not run yet (an assistant chain: sst2-l2 -> sst2-l3 ->
    sst2-teacher) resolves down to the first model that exists or is a hub id; layer indices
    are then checked against that model's depth, not the cut the stages will export."""
    from dataclasses import replace

    from attnkd.config.io import load_config
    from attnkd.recipes import find_recipe

    t = cfg.teacher
    if not t.recipe or Path(t.name).exists():
        return cfg
    path = t.recipe if Path(t.recipe).is_file() else find_recipe(t.recipe)
    if path is None:
        raise ConfigError("teacher.recipe", f"recipe not found: {t.recipe}")
    if str(path) in _seen:
        raise ConfigError("teacher.recipe", f"teacher stages form a loop: {' -> '.join(_seen)} "
                          f"-> {path}")  # fmt: skip
    stage = _teacher_stand_in(load_config(path), (*_seen, str(path)))
    start = stage.teacher.name if stage.student.init == "teacher" else stage.student.init
    return replace(cfg, teacher=replace(t, name=start))


def validate(cfg: DistillConfig, check_data: bool = True, check_models: bool = True) -> None:
    """All checks, in order of cost; raises the first :class:`ConfigError`. A staged run
    (``stages:`` / ``chain:``) is checked stage by stage (:func:`validate_stages`); a teacher set
    or another teacher strategy teacher by teacher (:mod:`attnkd.teachers.validate`)."""
    from attnkd.config.schema import StrategyConfig
    from attnkd.config.stages import is_staged

    if is_staged(cfg):
        return validate_stages(cfg, check_data, check_models)
    if cfg.teachers and cfg.task == "sentence":
        from attnkd.tasks.sentence_teachers import cached_sentence_set

        if cached_sentence_set(cfg):  # each teacher tokenises for itself: sentence terms only
            return _validate_cached_set(cfg, check_data, check_models)
        if check_models:  # a per-token term of a teacher with another tokenizer: name both
            _check_token_terms(cfg)
    if cfg.teachers or cfg.strategy != StrategyConfig():
        from attnkd.teachers.validate import validate_teaching

        return validate_teaching(cfg, validate, validate_models, check_data, check_models)
    if cfg.task == "image_classification":  # its own models, losses and data
        from attnkd.vision.validate import validate_image

        return validate_image(cfg, check_data, check_models)
    validate_static(cfg)
    validate_output(cfg)
    if cfg.data.data_dir is not None:
        _check(Path(cfg.data.data_dir).is_dir(), "data.data_dir",
               f"folder not found: {cfg.data.data_dir}")  # fmt: skip
    if check_models:
        validate_models(_teacher_stand_in(cfg))
    if check_data:
        validate_data(cfg)


def validate_stages(cfg: DistillConfig, check_data: bool = True, check_models: bool = True) -> None:
    """Every stage of a staged run, in order, as :func:`validate` checks one run.

    A stage that continues a student not exported yet is checked with the student it will
    receive stood in by the previous stage's student section (cut from this stage's teacher,
    exact when the stages' teachers share an architecture); a stage taught by a student not
    exported yet (an assistant chain) gets every check but the model ones, which run when the
    stage starts. Errors name the stage: ``stages[1].train.lr``.
    """
    from dataclasses import replace

    from attnkd.config.stages import stage_plan

    validate_output(cfg)
    previous, previous_known = None, True
    for st in stage_plan(cfg):
        c, models = st.cfg, check_models
        if st.index and st.carry == "student" and not Path(c.student.init).exists():
            s = c.student
            c = replace(c, student=replace(previous, freeze=s.freeze,
                                           attn_implementation=s.attn_implementation))  # fmt: skip
            models = models and previous_known
        if st.index and st.carry == "teacher" and not Path(c.teacher.name).exists():
            models = False
        try:
            validate(c, check_data, models)
        except ConfigError as err:
            raise ConfigError(f"stages[{st.index}].{err.key}",
                              f"stage '{st.name}': {err.message}") from err  # fmt: skip
        previous, previous_known = c.student, models


def _check_token_terms(cfg: DistillConfig) -> None:
    """A set with per-token terms (the general runner): refuse those of a teacher whose
    vocabulary differs from the student's, naming the teacher and the term
    (:func:`attnkd.teachers.compat.check_set_tokenizers`)."""
    from attnkd.teachers.compat import check_set_tokenizers

    labels = [f"{e.label or f't{i}'} ({e.name})" for i, e in enumerate(cfg.teachers)]
    check_set_tokenizers(cfg, labels)


def _validate_cached_set(cfg: DistillConfig, check_data: bool, check_models: bool) -> None:
    """All checks of a cached sentence-level teacher set (see :func:`cached_sentence_set`)."""
    from attnkd.config.schema import TeacherConfig
    from attnkd.tasks.sentence_teachers import check_teachers_models, check_teachers_static

    check_teachers_static(cfg)
    terms = [t for e in cfg.teachers for t in e.losses] + list(cfg.losses)
    first = TeacherConfig(cfg.teachers[0].name, cfg.teachers[0].attn_implementation)
    plain = replace(cfg, teachers=[], losses=terms, teacher=first)
    validate_static(plain)
    validate_output(cfg)
    if check_models:
        check_teachers_models(cfg, _cached_set_student_width(cfg))
    if check_data:
        validate_data(plain)


def _cached_set_student_width(cfg: DistillConfig) -> int:
    """The student's width from its config (or the first teacher's, for a cut)."""
    from attnkd.models.hub import check_model_folder, resolve_model_path
    from attnkd.models.load import load_config

    s = cfg.student
    key = "student.init" if s.init != "teacher" else "teachers[0].name"
    name = s.init if s.init != "teacher" else cfg.teachers[0].name
    try:
        scfg = load_config(name)
        resolved = resolve_model_path(name)
        if resolved.source != "hub":
            check_model_folder(resolved.path, name, tokenizer=True)
    except AttnkdError as err:
        raise ConfigError(key, f"{err} (the student reads its own tokenizer)") from err
    limit = position_limit(scfg)
    if limit is not None and cfg.data.max_length > limit:
        raise ConfigError("data.max_length", f"{cfg.data.max_length} tokens is more than "
                          f"'{name}' allows ({limit} positions)")  # fmt: skip
    return int(s.hidden_size or scfg.hidden_size) if s.init == "teacher" else int(scfg.hidden_size)
