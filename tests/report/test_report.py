"""HTML run report: reading a run folder, escaping, plots that exist, attention maps."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

pytest.importorskip("matplotlib")

from attnkd.errors import AttnkdError  # noqa: E402
from attnkd.report import ReportModels, read_run_log, write_report  # noqa: E402
from attnkd.report.plots import (  # noqa: E402
    Curve,
    attention_maps,
    attention_maps_png,
    curves_png,
    head_mean_attention,
    pareto_front,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script>"
TERMS = ("relation@11>5/qq", "relation@11>5/kk")


def _train(step: int, loss: float) -> dict:
    return {
        "event": "train",
        "step": step,
        "epoch": step / 100,
        "lr": 1e-4 * min(1.0, step / 30),
        "loss": loss,
        "terms": {TERMS[0]: 0.6 * loss, TERMS[1]: 0.4 * loss},
        "grad_norm": 1.0 / step**0.5,
        "items_per_s": 500.0,
        "elapsed_s": step * 0.1,
    }


def _eval(step: int, rho: float) -> dict:
    return {"event": "eval", "step": step, "metrics": {"spearman": rho, "pearson": rho - 0.01}}


def _metrics_lines() -> list[str]:
    """Start, train to 80 (70, 80 later redone), resume at 60, train to 120, a cut-off line."""
    events = [{"event": "start", "step": 0, "train": {"lr": 1e-4}}]
    events += [_train(s, 2.0 / s) for s in range(10, 90, 10)]
    events += [_eval(40, 0.70), _eval(80, 0.75)]
    events += [{"event": "resume", "step": 60, "train": {"lr": 1e-4}}]
    events += [_train(s, 3.0 / s) for s in range(70, 130, 10)]
    events += [_eval(80, 0.76), _eval(120, 0.79)]
    lines = [json.dumps(e) for e in events]
    return lines + ['{"event": "train", "step": 130, "lo']


RESULTS = {
    "name": "tiny-run",
    "eval_split": "stsb:dev",
    "eval_pairs": 1500,
    "teacher": {"name": "all-MiniLM-L6-v2", "spearman": 0.86963, "params": 22713216},
    "student": {"spearman": 0.81234, "params": 11356800, "layers": 3, "best_step": 120},
    "retention": 0.81234 / 0.86963,
    "train": {"steps": 120, "seconds_this_session": 61.5, "stopped_early": False},
}
EVAL = {
    "split": "stsb:dev",
    "pairs": 1500,
    "teacher": {"name": "all-MiniLM-L6-v2", "spearman": 0.86963, "params": 22713216,
                "sentences_per_s": 812.25},
    "student": {"path": "runs/tiny-run/student", "spearman": 0.81234, "params": 11356800,
                "sentences_per_s": 1650.5},
    "retention": 0.81234 / 0.86963,
    "speedup": 1650.5 / 812.25,
    "size_ratio": 11356800 / 22713216,
}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(_metrics_lines()), encoding="utf-8")
    (run / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    (run / "eval-stsb_dev.json").write_text(json.dumps(EVAL), encoding="utf-8")
    (run / "config.yaml").write_text(f'name: "{EVIL}"\ntrain:\n  lr: 0.0001\n', encoding="utf-8")
    return run


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


# --- reading metrics.jsonl


def test_run_log_keeps_later_lines_after_resume_and_skips_cut_line(run_dir):
    log = read_run_log(run_dir / "metrics.jsonl")
    assert [e["step"] for e in log.train] == list(range(10, 130, 10))
    by_step = {e["step"]: e["loss"] for e in log.train}
    assert by_step[60] == pytest.approx(2.0 / 60)  # before the resume point: first session
    assert by_step[70] == pytest.approx(3.0 / 70)  # redone after the resume: later line
    assert [(e["step"], e["metrics"]["spearman"]) for e in log.evals] == [
        (40, 0.70),
        (80, 0.76),
        (120, 0.79),
    ]
    assert log.resumes == [60]
    assert log.status.startswith("running or killed")
    assert (
        len(log.notes) == 1
        and f"line {len(_metrics_lines())}" in log.notes[0]
        and "cut short" in log.notes[0]
    )


def test_run_log_bad_middle_line_and_stop_status(tmp_path):
    lines = [json.dumps({"event": "start", "step": 0}), "not json", json.dumps(_train(10, 1.0))]
    lines.append(json.dumps({"event": "stop", "step": 10, "stopped_early": True}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    log = read_run_log(tmp_path / "m.jsonl")
    assert [e["step"] for e in log.train] == [10]
    assert log.notes == ["metrics.jsonl line 2 is not JSON: skipped"]
    assert log.status == "finished at step 10 (time budget reached)"


# --- the report


@pytest.fixture(scope="module")
def report(run_dir):
    """The full fake run's report, drawn once (plotting is the slow part)."""
    return write_report(run_dir)


def test_report_holds_numbers_escapes_text_and_links_existing_pngs(run_dir, report):
    path = report
    assert path == run_dir / "report" / "index.html"
    page = path.read_text(encoding="utf-8")
    for number in ("0.8696", "0.8123", "93.4%", "22,713,216", "11,356,800", "0.500×"):
        assert number in page, number
    for number in ("812.2", "1,650.5", "2.03×", "all-MiniLM-L6-v2", "runs/tiny-run/student"):
        assert number in page, number
    assert f"line {len(_metrics_lines())} is cut short" in page
    assert "resumed at steps</td><td>60" in page
    assert EVIL not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "lr: 0.0001" in page  # config shown verbatim
    images = _images(page)
    assert {"loss.png", "lr.png", "grad_norm.png", "eval.png", "pareto.png"} <= set(images)
    for src in images:
        assert "/" not in src and ":" not in src  # relative, beside index.html
        assert (path.parent / src).read_bytes()[:8] == PNG_MAGIC
    assert "<link" not in page and "<script" not in page  # self-contained, inert


def test_report_replaces_old_report_atomically(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "stale.png").write_bytes(b"old")
    write_report(tmp_path)
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == ["index.html"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_report_of_empty_folder_lists_what_is_missing(tmp_path):
    page = write_report(tmp_path).read_text(encoding="utf-8")
    for missing in ("results.json not found", "metrics.jsonl not found", "config.yaml not found"):
        assert missing in page
    assert _images(page) == []


def test_report_with_results_only_draws_size_pareto(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    (tmp_path / "eval-stsb_val.json").write_text("{broken", encoding="utf-8")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert _images(page) == ["pareto.png"]
    assert "eval-stsb_val.json is not valid JSON" in page


def test_missing_run_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(AttnkdError, match="no-such-run"):
        write_report(tmp_path / "no-such-run")


# --- plot helpers


def test_pareto_front_golden():
    xs, ys = [1.0, 2.0, 3.0, 0.5, 2.0], [0.5, 0.8, 0.7, 0.4, 0.8]
    assert pareto_front(xs, ys, lower_x_better=True) == [True, True, False, True, True]
    assert pareto_front(xs, ys, lower_x_better=False) == [False, True, True, False, True]


def test_pareto_front_matches_a_sweep():
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 12)
        xs, ys = [rng.random() for _ in range(n)], [rng.random() for _ in range(n)]
        best, expect = -1.0, [False] * n
        for i in sorted(range(n), key=lambda i: xs[i]):  # lower x better: y must beat all before
            if ys[i] > best:
                expect[i], best = True, ys[i]
        assert pareto_front(xs, ys, lower_x_better=True) == expect


def test_curves_on_log_axis_hide_non_positive_values(tmp_path):
    c = Curve("a", [1, 2, 3, 4], [1.0, 0.0, None, 0.5])
    info = curves_png(tmp_path / "a.png", [c], "t", "y", log_y=True)
    assert info.log_y and info.hidden == 2
    info = curves_png(tmp_path / "b.png", [Curve("b", [1, 2], [0.0, -1.0])], "t", "y", log_y=True)
    assert not info.log_y and info.hidden == 0  # nothing positive: linear axis, all shown
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC


# --- attention maps on tiny models built here

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "play", "##ing"]
VOCAB += ["the", "guitar", ".", "dog", "$", "<", ">"]
SENTENCE = "a man is playing the guitar $ <."


@pytest.fixture(scope="module")
def tiny():
    from transformers import BertConfig, BertModel, BertTokenizerFast

    def bert(width: int, heads: int, layers: int, seed: int):
        torch.manual_seed(seed)
        cfg = BertConfig(
            vocab_size=len(VOCAB), hidden_size=width, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=2 * width, max_position_embeddings=32,
            attn_implementation="eager", initializer_range=0.5,  # peaked attention
        )  # fmt: skip
        return BertModel(cfg, add_pooling_layer=False)

    return bert(16, 4, 2, 0), bert(8, 2, 1, 1), BertTokenizerFast


@pytest.fixture
def tokenizer(tiny, tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return tiny[2].from_pretrained(str(tmp_path))


def test_head_mean_attention_matches_eager_probabilities(tiny):
    teacher = tiny[0].eval()
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        got = head_mean_attention(teacher, {"input_ids": ids, "attention_mask": mask}, -1)
        ref = teacher(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[1]
    torch.testing.assert_close(got, ref[0].mean(0), rtol=1e-5, atol=1e-6)
    assert got[:, 7:].abs().max() == 0  # padded keys get nothing


def test_attention_maps_png(tiny, tokenizer, tmp_path):
    from scipy.stats import entropy

    teacher, student = tiny[0].train(), tiny[1]
    maps = attention_maps_png(teacher, student, tokenizer, SENTENCE, -1, 0, tmp_path / "a.png")
    n = len(tokenizer(SENTENCE)["input_ids"])
    assert maps.tokens[0] == "[CLS]" and len(maps.tokens) == n
    assert maps.teacher.shape == maps.student.shape == (n, n)
    torch.testing.assert_close(maps.teacher.sum(-1), torch.ones(n))
    assert (maps.layer_t, maps.layer_s) == (1, 0)
    naive = sum(entropy(t, s) for t, s in zip(maps.teacher.numpy(), maps.student.numpy())) / n
    assert maps.mean_kl() > 0.01
    assert maps.mean_kl() == pytest.approx(naive, rel=1e-4)
    assert teacher.training  # mode restored
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC
    same = attention_maps(teacher, teacher, tokenizer, SENTENCE, 0, 0)
    assert same.mean_kl() == pytest.approx(0.0, abs=1e-9)


def test_report_with_models_draws_attention(tiny, tokenizer, tmp_path):
    models = ReportModels(tiny[0], tiny[1], tokenizer, layers=[(-1, -1), (0, 5)])
    page = write_report(tmp_path, models=models).read_text(encoding="utf-8")
    assert _images(page) == ["attention_0_0.png"]
    assert (tmp_path / "report" / "attention_0_0.png").read_bytes()[:8] == PNG_MAGIC
    assert "not drawn" in page and "out of range" in page  # student has one layer
