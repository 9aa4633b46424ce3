"""The bad-input table: each case builds its input in a temporary folder and says which words
the one-line error must contain. ``docs/bad-input.md`` lists the same cases with the message a
user sees (``python tests/badinput/cases.py`` prints the table from real runs)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class Ctx:
    """What a case may use: a scratch folder, the tiny teacher and data, the base overrides."""

    tmp: Path
    teacher_dir: Path
    data_dir: Path
    base: list[str]
    monkeypatch: object = None

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def recipe(self, name: str, body: str) -> Path:
        """A YAML recipe: the base run (as YAML) with ``body`` appended at the end."""
        from attnkd.config.io import apply_overrides, to_dict
        from attnkd.config.schema import default_recipe

        base = to_dict(apply_overrides(default_recipe(), self.base))
        text = yaml.safe_dump(base, sort_keys=False)
        return self.file(name, text + body)

    def model_copy(self, name: str, drop: tuple[str, ...] = ()) -> Path:
        """A copy of the tiny teacher's folder without the files ``drop``."""
        folder = self.tmp / name
        shutil.copytree(self.teacher_dir, folder)
        for f in drop:
            (folder / f).unlink(missing_ok=True)
        return folder


@dataclass
class Case:
    id: str
    group: str
    what: str
    build: Callable[[Ctx], list[str]]
    """argv after the subcommand (overrides or a recipe path)."""
    expect: Callable[[Ctx], list[str]]
    """Words the error line must contain."""
    command: str = "validate"
    argv_only: bool = False
    """The argv is complete (no base overrides put before it)."""
    extra: dict = field(default_factory=dict)


def _o(*items: str) -> Callable[[Ctx], list[str]]:
    return lambda c: list(items)


def _w(*words: str) -> Callable[[Ctx], list[str]]:
    return lambda c: list(words)


def _tokens_reversed(c: Ctx) -> Path:
    """A student folder of the teacher's size whose tokenizer lists the same words in another
    order (same vocabulary size, different token ids)."""
    from int_helpers import VOCAB, make_tokenizer, tiny_bert

    folder = c.tmp / "student-other-tokens"
    tiny_bert(seed=1).save_pretrained(folder)
    vocab = c.tmp / "other-vocab.txt"
    vocab.write_text("\n".join(VOCAB[:5] + VOCAB[5:][::-1]) + "\n", encoding="utf-8")
    make_tokenizer(vocab).save_pretrained(folder)
    return folder


def _source(c: Ctx, name: str, content: str | bytes, suffix: str = "") -> list[str]:
    return [f"data.train_sources=[file:{c.file(name, content)}{suffix}]"]


def _n() -> int:
    from int_helpers import VOCAB

    return len(VOCAB)


def _bigger_vocab(c: Ctx) -> Path:
    from int_helpers import VOCAB, tiny_bert

    folder = c.tmp / "student-vocab-60"
    tiny_bert(seed=1, vocab_size=len(VOCAB) + 10).save_pretrained(folder)
    return folder


def _t5_folder(c: Ctx) -> Path:
    folder = c.model_copy("t5ish")
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 32}))
    return folder


def _truncated(c: Ctx) -> Path:
    folder = c.model_copy("truncated")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder


def _pickle_only(c: Ctx) -> Path:
    folder = c.model_copy("pickled", drop=("model.safetensors",))
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return folder


def _corrupt_cache(c: Ctx) -> list[str]:
    cache = c.tmp / "cache"
    folder = cache / "models" / "paraphrase-MiniLM-L3-v2"
    shutil.copytree(c.teacher_dir, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    c.monkeypatch.setenv("ATTNKD_CACHE_DIR", str(cache))
    return ["student.init=sentence-transformers/paraphrase-MiniLM-L3-v2"]


def _not_writable(c: Ctx) -> list[str]:
    import os

    ro = c.tmp / "read-only"
    ro.mkdir()
    os.chmod(ro, 0o555)
    real = os.access
    # root may write anywhere: ask the check as an ordinary user would be answered
    c.monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == ro else real(p, m))
    return [f"output_dir={ro}"]


# fmt: off
CASES: list[Case] = [
    # ---------------------------------------------------------------- config
    Case("unknown-key", "config", "unknown key in an override", _o("train.lrr=1"),
         _w("'train.lrr'", "did you mean 'lr'?")),
    Case("unknown-key-file", "config", "unknown key in a recipe file (file:line)",
         lambda c: [str(c.recipe("r.yaml", "extra_section: 1\n"))],
         lambda c: ["'extra_section'", f"{c.tmp / 'r.yaml'}:"], argv_only=True),
    Case("wrong-type-int", "config", "text for an int", _o("train.max_steps=many"),
         _w("'train.max_steps'", "expected int, got str 'many'")),
    Case("wrong-type-bool", "config", "text for a bool", _o("train.bf16=maybe"),
         _w("'train.bf16'", "expected bool")),
    Case("wrong-type-list", "config", "a number for a list", _o("student.layers=3"),
         _w("'student.layers'", "expected list[int]")),
    Case("yaml-syntax", "config", "YAML syntax error (line named)",
         lambda c: [str(c.file("bad.yaml", "train:\n  lr: [1, 2\n  batch_size: 3\n"))],
         lambda c: [f"{c.tmp / 'bad.yaml'}:", "invalid YAML"], argv_only=True),
    Case("yaml-duplicate", "config", "a key given twice",
         lambda c: [str(c.file("dup.yaml", "train:\n  lr: 1.0\n  lr: 2.0\n"))],
         lambda c: [f"{c.tmp / 'dup.yaml'}:3", "duplicate key"], argv_only=True),
    Case("yaml-not-mapping", "config", "a recipe that is a list",
         lambda c: [str(c.file("list.yaml", "- a\n- b\n"))],
         _w("expected a mapping"), argv_only=True),
    Case("config-missing", "config", "recipe file not found",
         lambda c: [str(c.tmp / "nosuch.yaml")], _w("nosuch.yaml", "config file not found"),
         argv_only=True),
    Case("config-not-utf8", "config", "recipe file not UTF-8",
         lambda c: [str(c.file("latin.yaml", b"name: caf\xe9\n"))],
         _w("latin.yaml", "cannot read config file"), argv_only=True),
    Case("lr-zero", "config", "out of range: learning rate 0", _o("train.lr=0"),
         _w("'train.lr'", "must be > 0")),
    Case("val-fraction", "config", "out of range: a fraction above 1",
         _o("data.val_fraction=1.5"), _w("'data.val_fraction'", "(0, 1)")),
    Case("batch-zero", "config", "out of range: batch size 0", _o("train.batch_size=0"),
         _w("'train.batch_size'", "must be >= 1")),
    Case("layer-beyond", "config", "student layer beyond the teacher's 4",
         _o("student.layers=[0,9]"), _w("'student.layers'", "index 9 out of range")),
    Case("loss-layer-beyond", "config", "loss teacher_layer beyond the teacher",
         _o("losses.0.teacher_layer=7"), _w("'losses[0].teacher_layer'", "out of range")),
    Case("relation-heads", "config", "relation heads do not divide the widths",
         _o("losses.0.relation_heads=5"),
         _w("'losses[0].relation_heads'", "not divisible by relation_heads=5")),
    Case("width-heads", "config", "student width not divisible by its heads",
         _o("student.hidden_size=30"), _w("'student.num_heads'", "not divisible")),
    Case("empty-losses", "config", "no loss terms", _o("losses=[]"),
         _w("'losses'", "at least one loss term")),
    Case("unknown-loss", "config", "unknown loss name", _o("losses.0.name=fancy"),
         _w("'losses[0].name'", "unknown loss 'fancy'")),
    Case("unknown-kind", "config", "unknown divergence kind", _o("losses.0.kind=kl"),
         _w("'losses[0].kind'", "expected one of")),
    Case("override-no-equals", "config", "override without '='", _o("train.lr"),
         _w("malformed override 'train.lr'", "expected key=value")),
    Case("override-empty-key", "config", "override with an empty key", _o("=3"),
         _w("malformed override '=3'")),
    Case("override-bad-yaml", "config", "override value that is not YAML", _o("train.lr=[1,"),
         _w("'train.lr'", "not valid YAML")),
    Case("override-index", "config", "override of a list item that does not exist",
         _o("losses.5.weight=1"), _w("'losses'", "'5' is not an index")),
    Case("unknown-task", "config", "unknown task", _o("task=vision"),
         _w("'task'", "expected one of")),
    Case("task-vs-teacher", "config", "causal_lm task with an encoder teacher",
         _o("task=causal_lm"), _w("'task'", "does not fit the teacher, an encoder")),
    Case("layers-and-rule", "config", "both student.layers and layer_rule",
         _o("student.layer_rule=every:2"), _w("'student.layer_rule'", "not both")),
    Case("freeze-fresh-embeddings", "config", "freeze_embeddings on a narrowed student",
         _o("student.hidden_size=16", "train.freeze_embeddings=true"),
         _w("'train.freeze_embeddings'", "freshly initialised")),
    # ---------------------------------------------------------------- data
    Case("data-missing-file", "data", "a data file that does not exist",
         lambda c: [f"data.train_sources=[file:{c.tmp / 'gone.txt'}]"],
         lambda c: [str(c.tmp / "gone.txt"), "file not found"]),
    Case("data-bad-row", "data", "malformed JSON line",
         lambda c: _source(c, "rows.jsonl", '{"text": "a"}\n{oops\n'),
         lambda c: [f"{c.tmp / 'rows.jsonl'}:2"]),
    Case("data-empty", "data", "an empty data file",
         lambda c: _source(c, "empty.txt", ""),
         lambda c: [str(c.tmp / "empty.txt"), "no sentences"]),
    Case("data-wrong-column", "data", "a column the file does not have",
         lambda c: _source(c, "t.tsv", "text\tlabel\na b\t1\n", "#sentence"),
         lambda c: [str(c.tmp / "t.tsv"), "no column 'sentence'"]),
    Case("data-not-utf8", "data", "non-UTF-8 bytes in a text file",
         lambda c: _source(c, "l1.txt", b"good line\nbad \xff line\n"),
         lambda c: [f"{c.tmp / 'l1.txt'}:2", "not valid utf-8", "column 5"]),
    Case("data-too-few", "data", "fewer sentences than one batch", _o("train.batch_size=500"),
         _w("'train.batch_size'", "500 is more than the", "training sentences")),
    Case("data-dir-missing", "data", "data folder that does not exist",
         lambda c: [f"data.data_dir={c.tmp / 'nodata'}"], _w("'data.data_dir'", "not found")),
    Case("data-unknown-source", "data", "unknown source name",
         _o("data.train_sources=[nosuch]"), _w("unknown source 'nosuch'")),
    # ---------------------------------------------------------------- models
    Case("model-missing", "models", "teacher folder that does not exist",
         _o("teacher.name=./no/such/model"), _w("'teacher.name'", "does not exist")),
    Case("model-no-weights", "models", "config.json but no weights",
         lambda c: [f"teacher.name={c.model_copy('noweights', drop=('model.safetensors',))}"],
         _w("'teacher.name'", "no weights (expected model.safetensors)")),
    Case("model-no-tokenizer", "models", "teacher with weights but no tokenizer",
         lambda c: [f"teacher.name={c.model_copy('notok', drop=('tokenizer.json', 'vocab.txt'))}"],
         _w("'teacher.name'", "has no tokenizer")),
    Case("model-pickle-only", "models", "only pickled weights (pytorch_model.bin)",
         lambda c: [f"teacher.name={_pickle_only(c)}"],
         _w("'teacher.name'", "pytorch_model.bin", "safetensors weights only")),
    Case("model-truncated", "models", "truncated model.safetensors",
         lambda c: [f"teacher.name={_truncated(c)}"],
         _w("'teacher.name'", "model.safetensors are corrupt or truncated")),
    Case("model-bad-config", "models", "config.json that is not JSON",
         lambda c: [f"teacher.name={_bad_config(c)}"],
         _w("'teacher.name'", "cannot load the config")),
    Case("model-family", "models", "unsupported model family",
         lambda c: [f"teacher.name={_t5_folder(c)}"],
         _w("'teacher.name'", "no adapter for model_type 't5'")),
    Case("model-vocab", "models", "student vocabulary size differs from the teacher's",
         lambda c: [f"student.init={_bigger_vocab(c)}", "student.layers=null"],
         lambda c: ["'student.init'", "vocabulary mismatch", f"'{c.teacher_dir}' has {_n()}",
                    f"student-vocab-60' {_n() + 10}"]),
    Case("model-tokens", "models", "same size, different tokens (tokenizer hash)",
         lambda c: [f"student.init={_tokens_reversed(c)}", "student.layers=null"],
         _w("'student.init'", "tokenizer mismatch", "vocab hash")),
    Case("model-positions", "models", "max_length beyond the position embeddings",
         _o("data.max_length=200"), _w("'data.max_length'", "128 positions", "<= 128")),
    # ---------------------------------------------------------------- resources
    Case("output-is-file", "resources", "output_dir is a file",
         lambda c: [f"output_dir={c.file('afile', 'x')}"], _w("'output_dir'", "is a file")),
    Case("output-not-writable", "resources", "output folder not writable", _not_writable,
         _w("'output_dir'", "not writable")),
    # ---------------------------------------------------------------- caches
    Case("cache-corrupt", "caches", "corrupt cached converted model", _corrupt_cache,
         _w("'student.init'", "corrupt or truncated", "cached conversion: delete")),
    # ---------------------------------------------------------------- CLI arguments
    Case("recipe-with-equals", "cli", "recipe path containing '=' (read as a file)",
         lambda c: [str(c.recipe("lr=3e-4.yaml", "bogus: 1\n"))],
         lambda c: [f"{c.tmp / 'lr=3e-4.yaml'}:", "unknown key 'bogus'"], argv_only=True),
    Case("resume-no-run", "cli", "--resume with no run to continue", _o("--resume"),
         _w("'name'", "--resume: there is no run at"), command="distill"),
]
# fmt: on


def _bad_config(c: Ctx) -> Path:
    folder = c.model_copy("badjson")
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    return folder


def record(case_id: str, group: str, what: str, argv: list[str], err: str, tmp: Path) -> None:
    """With ``ATTNKD_BADINPUT_RECORD=file.jsonl`` set, append what the user saw (temporary paths
    shortened) so docs/bad-input.md can show real messages."""
    import os

    out = os.environ.get("ATTNKD_BADINPUT_RECORD")
    if not out:
        return

    def short(text: str) -> str:
        return text.replace(str(tmp), "<tmp>").replace(str(tmp.parent), "<tmp>")

    line = next((ln for ln in err.splitlines() if ln.startswith("error:")), err.strip())
    row = {"id": case_id, "group": group, "what": what, "argv": [short(a) for a in argv],
           "message": short(line)}  # fmt: skip
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def argv_of(case: Case, ctx: Ctx) -> list[str]:
    built = case.build(ctx)
    if case.argv_only:
        return [case.command, *built, f"output_dir={ctx.tmp / 'runs'}", "name=tiny"]
    return [case.command, *ctx.base, *built]
