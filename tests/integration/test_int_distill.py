"""End to end: ``run_distill`` on the tiny teacher and data, the exported student in Hugging Face
and sentence-transformers form, ``attnkd eval``, refusing to clobber a run, and exact resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from int_helpers import fast_overrides
from safetensors.torch import load_file

from attnkd.cli import main
from attnkd.config.io import apply_overrides, load_config
from attnkd.config.schema import DistillConfig, default_recipe
from attnkd.distill import run_distill
from attnkd.engine import loop
from attnkd.engine.metrics import read_metrics
from attnkd.errors import AttnkdError
from attnkd.eval.encode import encode
from attnkd.eval.sts import sts_eval
from attnkd.models.load import load_encoder
from attnkd.tasks.sentence import GroupedBatches

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_dir, data_dir):
    """``make(*overrides)``: the fast tiny config, all runs in one module-wide output folder."""
    out = tmp_path_factory.mktemp("runs")
    losses = "losses=[{name: relation}, {name: hidden_mse, teacher_layer: 1, student_layer: 0}]"
    base = [*fast_overrides(teacher_dir, data_dir, out), losses]

    def make(*extra: str) -> DistillConfig:
        return apply_overrides(default_recipe(), [*base, *extra])

    return make


@pytest.fixture(scope="module")
def finished(runs):
    """One uninterrupted 6-step run named 'full': (config, results, run folder)."""
    cfg = runs("name=full")
    results = run_distill(cfg, progress=False)
    return cfg, results, cfg_dir(cfg)


def cfg_dir(cfg: DistillConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_results_json_and_run_folder(finished):
    cfg, results, run = finished
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    t, s = results["teacher"], results["student"]
    assert results["eval_split"] == "stsb:dev" and results["eval_pairs"] == 24
    assert results["select_split"] == "stsb:val"  # best checkpoint not chosen on the report split
    assert -100 <= t["spearman"] <= 100 and -100 <= s["spearman"] <= 100
    assert results["retention"] == pytest.approx(s["spearman"] / t["spearman"])
    assert s["layers"] == 2 and s["params"] < t["params"]
    assert results["train"]["steps"] == 6 and not results["train"]["stopped_early"]
    assert s["best_step"] in (3, 6)
    assert load_config(run / "config.yaml") == cfg
    events = read_metrics(run)
    evals = [e["step"] for e in events if e["event"] == "eval"]
    train = [e for e in events if e["event"] == "train"]
    assert evals == [3, 6] and [e["step"] for e in train] == [2, 4, 6]
    term_names = set(train[0]["terms"])
    assert {"relation@3>1/qq", "relation@3>1/kk", "relation@3>1/vv", "hidden_mse@1>0/mse"} == (
        term_names
    )
    best = _weights(run / "checkpoints" / "best")
    exported = _weights(run / "student")
    assert set(best) == {f"student.{k}" for k in exported}  # no projector in this recipe
    for key, value in exported.items():  # the exported student is the best checkpoint
        assert torch.equal(value, best[f"student.{key}"]), key


def test_exported_student_loads_with_automodel_and_reproduces_its_score(finished, data_dir):
    from transformers import AutoModel, AutoTokenizer

    from attnkd.data.benchmarks import read_stsb

    _, results, run = finished
    model = AutoModel.from_pretrained(run / "student").eval()
    tok = AutoTokenizer.from_pretrained(run / "student")
    assert model.config.num_hidden_layers == 2 and model.config.model_type == "bert"
    pairs = read_stsb("dev", data_dir)
    r = sts_eval(model, tok, [p.sentence1 for p in pairs], [p.sentence2 for p in pairs],
                 [p.score for p in pairs], max_length=32)  # fmt: skip
    assert r.spearman == pytest.approx(results["student"]["spearman"], abs=1e-6)


def test_exported_student_loads_in_sentence_transformers_with_mean_pooling(finished, data_dir):
    st = pytest.importorskip("sentence_transformers")
    _, _, run = finished
    model = st.SentenceTransformer(str(run / "student"), device="cpu")
    pooling = [m for m in model if type(m).__name__ == "Pooling"]
    assert len(pooling) == 1
    config = pooling[0].get_config_dict()  # sentence-transformers >= 6 renames the flags
    old_flag = "mean" if config.get("pooling_mode_mean_tokens") else None
    assert config.get("pooling_mode", old_flag) in ("mean", ("mean",), ["mean"]), config
    sentences = [
        "a big dog is running in the park .",
        "the cat .",
        "a small girl is playing with the ball in the garden and the horse is eating",
    ]
    got = torch.as_tensor(model.encode(sentences, convert_to_numpy=True))
    loaded = load_encoder(str(run / "student"))
    want = encode(loaded.model, loaded.tokenizer, sentences, max_length=128)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attnkd_eval_on_the_run(finished, capsys):
    _, results, run = finished
    assert main(["eval", str(run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    on_disk = json.loads((run / "eval-stsb_dev.json").read_text())
    assert printed == on_disk
    assert printed["student"]["spearman"] == pytest.approx(results["student"]["spearman"], abs=1e-6)
    assert printed["teacher"]["spearman"] == pytest.approx(results["teacher"]["spearman"], abs=1e-6)
    assert printed["size_ratio"] == pytest.approx(
        results["student"]["params"] / results["teacher"]["params"]
    )
    assert printed["speedup"] > 0 and printed["pairs"] == 24


def test_rerun_without_resume_or_overwrite_refuses(finished, capsys):
    cfg, _, run = finished
    before = (run / "results.json").read_text()
    with pytest.raises(AttnkdError, match="already holds checkpoints: pass --resume"):
        run_distill(cfg, progress=False)
    argv = ["distill", str(run / "config.yaml"), "--no-progress"]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "results.json").read_text() == before


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(finished, runs, monkeypatch):
    _, _, full = finished
    cfg = runs("name=interrupted")
    original = GroupedBatches.batch_at
    calls = []

    def interrupt_at_step_4(self, epoch, index):
        calls.append((epoch, index))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, epoch, index)

    monkeypatch.setattr(GroupedBatches, "batch_at", interrupt_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg, progress=False)
    monkeypatch.setattr(GroupedBatches, "batch_at", original)
    run = cfg_dir(cfg)
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    assert state["state"]["step"] == 3
    assert not (run / "results.json").exists()
    with pytest.raises(AttnkdError, match="--resume"):
        run_distill(cfg, progress=False)
    resumed_calls = []

    def record(self, epoch, index):
        resumed_calls.append((epoch, index))
        return original(self, epoch, index)

    monkeypatch.setattr(GroupedBatches, "batch_at", record)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "changed settings" warning
        results = run_distill(cfg, progress=False, resume=True)
    assert results["train"]["steps"] == 6 and results["train"]["resumed_from"] == "step-00000003"
    assert resumed_calls == [(0, 3), (0, 4), (0, 5)]  # only steps 4-6 ran, at their batches
    kinds = [(e["event"], e["step"]) for e in read_metrics(run) if e["event"] != "train"]
    assert ("interrupted", 3) in kinds and ("resume", 3) in kinds
    for sub in ("student", "checkpoints/last", "checkpoints/best"):
        a, b = _weights(full / sub), _weights(run / sub)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (sub, key)


def test_resume_with_more_steps_warns_and_matches_only_with_a_flat_schedule(
    finished, runs, monkeypatch
):
    """Extending max_steps on resume changes the decay of the steps already taken, so the
    weights can only match an uninterrupted run when the schedule does not depend on max_steps:
    forcing a constant schedule shows everything else (RNG, batch position, optimizer) carries."""
    original = loop.Schedule.from_config.__func__

    def flat_schedule(cls, cfg, decay="linear"):
        return original(cls, cfg, "constant")

    monkeypatch.setattr(loop.Schedule, "from_config", classmethod(flat_schedule))
    flat = run_distill(runs("name=flat"), progress=False)
    run_distill(runs("name=grown", "train.max_steps=3"), progress=False)
    with pytest.warns(UserWarning, match=r"changed settings \['max_steps'\]"):
        grown = run_distill(runs("name=grown"), progress=False, resume=True)
    assert grown["train"]["steps"] == flat["train"]["steps"] == 6
    a = _weights(cfg_dir(runs("name=flat")) / "checkpoints" / "last")
    b = _weights(cfg_dir(runs("name=grown")) / "checkpoints" / "last")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_zero_steps_exports_the_student_as_built(runs, teacher_dir):
    cfg = runs("name=baseline", "train.max_steps=0")
    results = run_distill(cfg, progress=False)
    assert results["train"]["steps"] == 0 and results["student"]["best_step"] is None
    student = _weights(cfg_dir(cfg) / "student")
    teacher = _weights(teacher_dir)
    for key, value in student.items():
        source = key.replace("encoder.layer.1.", "encoder.layer.3.")
        assert torch.equal(value, teacher[source]), key
    assert not (cfg_dir(cfg) / "checkpoints").exists()


def test_mpnet_teacher_runs_end_to_end_on_eager_attention(runs, mpnet_dir, tokenizer, tmp_path):
    folder = tmp_path / "mpnet-with-tokenizer"
    folder.mkdir()
    for item in mpnet_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    tokenizer.save_pretrained(folder)
    cfg = runs("name=mpnet", f"teacher.name={folder}", "train.max_steps=2", "train.eval_every=2")
    assert cfg.teacher.attn_implementation == cfg.student.attn_implementation == "sdpa"
    results = run_distill(cfg, progress=False)
    assert results["train"]["steps"] == 2 and results["student"]["layers"] == 2
    exported = load_encoder(str(cfg_dir(cfg) / "student"))
    assert exported.model.config.model_type == "mpnet"
    assert exported.model.config._attn_implementation == "eager"


def test_resume_without_a_checkpoint_and_a_batch_larger_than_the_corpus_fail_cleanly(runs, capsys):
    cfg = runs("name=never-ran")
    argv = ["distill", *_as_overrides(cfg), "--resume", "--no-progress"]
    assert main(argv) == 2  # no such run: most often a typo in the name
    err = capsys.readouterr().err
    assert "there is no run at" in err and "Traceback" not in err
    cfg = runs("name=huge-batch", "data.train_sources=[sst2:train]", "train.batch_size=64")
    assert main(["distill", *_as_overrides(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config error at 'train.batch_size'" in err and "training sentences" in err
    assert not (cfg_dir(cfg) / "checkpoints").exists()


def _as_overrides(cfg: DistillConfig) -> list[str]:
    """The whole config as ``section=...`` overrides (the CLI starts from its default recipe)."""
    from attnkd.config.io import to_dict

    return [f"{k}={json.dumps(v)}" for k, v in to_dict(cfg).items()]


def test_cli_report_with_attention_maps(finished, capsys):
    pytest.importorskip("matplotlib")
    _, _, run = finished
    assert main(["report", str(run), "--attention", "--sentence", "a dog is running ."]) == 0
    assert "report:" in capsys.readouterr().out
    html = (run / "report" / "index.html").read_text()
    pngs = sorted((run / "report").glob("attention_*.png"))
    assert len(pngs) == 1 and pngs[0].name in html  # one sentence x the relation term's layers
