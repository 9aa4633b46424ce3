"""``attnkd distill`` for drafts on a tiny Llama: α logged at every evaluation and used as the
checkpoint criterion (``train.select_metric: alpha``), on-policy rows (``data.on_policy``) with
their generation cost logged, the cross-entropy baseline ``lm_ce`` (no teacher forward), and
the refusals of bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from int_helpers import save_tiny_llama_folder, write_story

from attnkd.cli import main
from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.distill import run_distill
from attnkd.errors import ConfigError
from attnkd.validate import validate_static

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("drafts")
    teacher = save_tiny_llama_folder(root / "tiny-llama")
    return teacher, write_story(root / "story.txt", seed=3), root / "runs"


def _cfg(lm_setup, *extra):
    teacher, text, runs = lm_setup
    return apply_overrides(
        default_recipe(),
        [
            "name=tiny-draft", "task=causal_lm", f"output_dir={runs}", f"teacher.name={teacher}",
            "student.layers=[0]", "losses=[{name: logits, kind: tvd}]",
            f"data.train_sources=[file:{text}]", "data.max_length=16",
            "data.val_fraction=0.1", "data.eval_fraction=0.1",
            "train.max_steps=6", "train.max_minutes=null", "train.eval_every=2",
            "train.save_every=2", "train.batch_size=4", "train.log_every=2", "train.lr=3e-3",
            "train.warmup_ratio=0.0", "train.freeze_embeddings=true", *extra,
        ],
    )  # fmt: skip


def _evals(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == "eval"]


def test_alpha_selects_the_checkpoint_and_on_policy_cost_is_logged(lm_setup):
    cfg = _cfg(lm_setup, "train.select_metric=alpha", "data.on_policy=0.5",
               "data.on_policy_prefix=4")  # fmt: skip
    results = run_distill(cfg, progress=False)
    run = Path(cfg.output_dir) / cfg.name
    evals = _evals(run)
    assert len(evals) == 3, evals  # steps 2, 4, 6
    flat = [r["metrics"] for r in evals]
    alphas = {r["step"]: m["alpha"] for r, m in zip(evals, flat, strict=True)}
    assert all(0.0 <= a <= 1.0 for a in alphas.values())
    best = max(alphas, key=lambda s: (alphas[s], -s))
    assert results["student"]["best_step"] == best
    assert results["student"]["select_alpha"] == pytest.approx(alphas[best])
    gen = [m["onpolicy_gen_seconds"] for m in flat]
    assert gen[0] > 0 and gen == sorted(gen)  # cumulative generation time
    assert flat[-1]["onpolicy_gen_tokens"] == 6 * 2 * (16 - 4)  # 6 steps x 2 rows x 12 tokens


def test_cross_entropy_baseline_trains_without_the_teacher(lm_setup, monkeypatch):
    cfg = _cfg(lm_setup, "name=tiny-draft-ce", "losses=[{name: lm_ce}]")
    calls = []
    import attnkd.distill as distill

    real = distill.make_step

    def counting(teacher, distiller, model=None):
        teacher.register_forward_pre_hook(lambda *a: calls.append(1))
        return real(teacher, distiller, model)

    monkeypatch.setattr(distill, "make_step", counting)
    results = run_distill(cfg, progress=False)
    rows = [json.loads(x) for x in (Path(cfg.output_dir) / cfg.name / "metrics.jsonl")
            .read_text().splitlines()]  # fmt: skip
    ce = [r["terms"]["lm_ce/ce"] for r in rows if r.get("event") == "train"]
    assert ce and all(v > 0 for v in ce)
    assert results["train"]["steps"] == 6
    # the teacher ran only for evaluation (alpha probe, final perplexity), never in a step
    assert len(calls) < 6


def test_bad_draft_settings_are_refused(lm_setup, capsys):
    for override, key in (("train.select_metric=accuracy", "train.select_metric"),
                          ("data.on_policy=1.5", "data.on_policy"),
                          ("data.on_policy_prefix=16", "data.on_policy_prefix")):  # fmt: skip
        extra = [override] + (["data.on_policy=0.5"] if "prefix" in override else [])
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_static(_cfg(lm_setup, *extra))
    teacher, text, runs = lm_setup
    rc = main(["validate", "task=sentence", "train.select_metric=alpha"])
    assert rc == 2 and "train.select_metric" in capsys.readouterr().err
