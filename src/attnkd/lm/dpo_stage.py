"""Preference stage after mimic distillation (LLaVA-MoD's preference distillation), by DPO.

1. Prompts: the first ``dpo.prompt_tokens`` tokens of ``dpo.prompts`` training blocks (drawn
   with ``train.seed``); held-out prompts for judging come from the eval blocks.
2. Pairs: the student samples ``dpo.samples_per_prompt`` continuations of ``dpo.new_tokens``
   tokens per prompt; the teacher scores each by its log-likelihood; the most likely is
   *chosen*, the least likely *rejected* (kept when their mean log-likelihood per token differs
   by more than ``dpo.min_margin``).
3. DPO (:func:`attnkd.losses.dpo.dpo_loss`) with the reference ``dpo.reference``: 'teacher'
   (LLaVA-MoD: "treating l-MLLM as the reference model"; its log-likelihoods from step 2 are
   reused) or 'student' (the stage-start student, as in the original DPO).
4. Report: held-out perplexity before and after, and the teacher-judged win rate: on each
   held-out prompt the stage-start and the final student each sample one continuation (same
   random stream); the teacher prefers the one it finds more likely (a tie counts one half).

:func:`run_dpo_stage` runs the stage on models in memory (``(cfg, student, teacher,
run_dir)``); :func:`dpo_stage_kind` has the stage-kind signature ``(cfg, resume, progress,
overwrite)`` for a stage pipeline; :func:`run_dpo_on_run` / :func:`run_dpo_on_recipe` are
``attnkd dpo RUN_OR_RECIPE`` (a recipe runs its mimic distillation first).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnkd.atomic import write_json
from attnkd.config.schema import DistillConfig
from attnkd.errors import AttnkdError, ConfigError
from attnkd.lm.sampling import continuation_logprobs, sample_continuations
from attnkd.losses.dpo import dpo_loss, sequence_logprobs

log = logging.getLogger("attnkd")

__all__ = [
    "PreferencePairs",
    "build_pairs",
    "dpo_stage_kind",
    "run_dpo_on_recipe",
    "run_dpo_on_run",
    "run_dpo_stage",
    "win_rate",
]

REFERENCES = ("teacher", "student")


@dataclass
class PreferencePairs:
    """``prompts`` (n, P); ``chosen`` / ``rejected`` (n, R) continuations; the teacher's total
    log-likelihood of each (n,), which is the reference when ``dpo.reference`` is 'teacher'."""

    prompts: Tensor
    chosen: Tensor
    rejected: Tensor
    teacher_chosen: Tensor
    teacher_rejected: Tensor
    candidates: int
    """Prompts considered (pairs kept: ``len(prompts)``)."""

    def __len__(self) -> int:
        return self.prompts.shape[0]


def check_dpo(cfg: DistillConfig) -> None:
    d = cfg.dpo
    rules = (
        ("beta", d.beta > 0, "must be > 0"),
        ("reference", d.reference in REFERENCES, f"must be one of {list(REFERENCES)}"),
        ("samples_per_prompt", d.samples_per_prompt >= 2, "must be >= 2 (a pair needs two)"),
        ("prompts", d.prompts >= 1, "must be >= 1"),
        ("prompt_tokens", 1 <= d.prompt_tokens < cfg.data.max_length,
         f"must be in [1, data.max_length = {cfg.data.max_length})"),
        ("new_tokens", d.new_tokens >= 1, "must be >= 1"),
        ("temperature", d.temperature > 0, "must be > 0 (samples must differ)"),
        ("steps", d.steps >= 1, "must be >= 1"),
        ("batch_size", d.batch_size >= 1, "must be >= 1"),
        ("lr", d.lr > 0, "must be > 0"),
        ("eval_prompts", d.eval_prompts >= 1, "must be >= 1"),
        ("eval_blocks", d.eval_blocks >= 0, "must be >= 0"),
    )  # fmt: skip
    for key, ok, message in rules:
        if not ok:
            raise ConfigError(f"dpo.{key}", message)
    if cfg.task != "causal_lm":
        raise ConfigError("task", f"the DPO stage is for 'causal_lm', not {cfg.task!r}")


def build_pairs(
    student: nn.Module, teacher: nn.Module, prompts: Tensor, cfg: DistillConfig, seed: int
) -> PreferencePairs:
    """Sample, let the teacher rank, keep (most likely, least likely) per prompt."""
    d = cfg.dpo
    gen = torch.Generator().manual_seed(seed)
    keep: list[tuple[int, Tensor, Tensor, float, float]] = []
    for start in range(0, len(prompts), d.batch_size):
        p = prompts[start : start + d.batch_size]
        rep = p.repeat_interleave(d.samples_per_prompt, dim=0)
        cont = sample_continuations(student, rep, d.new_tokens, d.temperature, 1.0, gen)
        ll = continuation_logprobs(teacher, rep, cont).sum(-1)
        ll = ll.view(len(p), d.samples_per_prompt)
        cont = cont.view(len(p), d.samples_per_prompt, -1)
        for i in range(len(p)):
            hi, lo = int(ll[i].argmax()), int(ll[i].argmin())
            if (ll[i, hi] - ll[i, lo]) / d.new_tokens > d.min_margin:
                keep.append((start + i, cont[i, hi], cont[i, lo], float(ll[i, hi]),
                             float(ll[i, lo])))  # fmt: skip
    if not keep:
        raise AttnkdError(
            f"no preference pair: the teacher never preferred one of {d.samples_per_prompt} "
            f"samples by more than dpo.min_margin = {d.min_margin} nats per token"
        )
    idx = torch.tensor([k[0] for k in keep])
    return PreferencePairs(
        prompts[idx], torch.stack([k[1] for k in keep]), torch.stack([k[2] for k in keep]),
        torch.tensor([k[3] for k in keep]), torch.tensor([k[4] for k in keep]), len(prompts),
    )  # fmt: skip


def _policy_logprobs(model: nn.Module, prompts: Tensor, conts: Tensor) -> Tensor:
    """Differentiable sum of the continuation tokens' log-probs, (n,)."""
    ids = torch.cat((prompts, conts), dim=1).to(next(model.parameters()).device)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, prompts.shape[1] :] = True
    return sequence_logprobs(model(input_ids=ids).logits, ids, resp).cpu()


def _train(
    student: nn.Module, pairs: PreferencePairs, ref_c: Tensor, ref_r: Tensor,
    cfg: DistillConfig, run_dir: Path,
) -> list[dict[str, Any]]:  # fmt: skip
    """``dpo.steps`` AdamW steps of ``dpo.batch_size`` pairs (reshuffled each pass); each
    step's loss, reward accuracy and margins go to ``run_dir/metrics.jsonl``."""
    from attnkd.engine.metrics import MetricsWriter

    d = cfg.dpo
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=d.lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(cfg.train.seed)
    perm, pos = torch.randperm(len(pairs), generator=order), 0
    history = []
    with MetricsWriter(run_dir, tensorboard=False) as writer:
        for step in range(1, d.steps + 1):
            if pos + min(d.batch_size, len(pairs)) > len(pairs):
                perm, pos = torch.randperm(len(pairs), generator=order), 0
            idx = perm[pos : pos + d.batch_size]
            pos += len(idx)
            pol = _policy_logprobs(
                student, torch.cat((pairs.prompts[idx], pairs.prompts[idx])),
                torch.cat((pairs.chosen[idx], pairs.rejected[idx])),
            )  # fmt: skip
            n = len(idx)
            out = dpo_loss(pol[:n], pol[n:], ref_c[idx], ref_r[idx], beta=d.beta)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_norm)
            opt.step()
            row = {"event": "train", "step": step, "loss": float(out.loss.detach()),
                   "reward_accuracy": out.accuracy, "margin": float(out.margin.mean()),
                   "chosen_reward": float(out.chosen_reward.mean()),
                   "rejected_reward": float(out.rejected_reward.mean()),
                   "grad_norm": float(norm)}  # fmt: skip
            writer.log(row)
            history.append(row)
    student.eval()
    return history


def _judge_samples(student: nn.Module, prompts: Tensor, cfg: DistillConfig, seed: int) -> Tensor:
    """One continuation per held-out prompt, from a fixed random stream (same before/after)."""
    d = cfg.dpo
    gen = torch.Generator().manual_seed(seed)
    return sample_continuations(student, prompts, d.new_tokens, d.temperature, 1.0, gen)


def win_rate(teacher: nn.Module, prompts: Tensor, a: Tensor, b: Tensor) -> dict[str, float]:
    """Share of prompts where the teacher finds ``a``'s continuation more likely than ``b``'s
    (ties count one half), and both mean log-likelihoods per token."""
    la = continuation_logprobs(teacher, prompts, a)
    lb = continuation_logprobs(teacher, prompts, b)
    sa, sb = la.sum(-1), lb.sum(-1)
    wins = (sa > sb).double() + 0.5 * (sa == sb).double()
    return {"win_rate": float(wins.mean()), "teacher_ll_per_token_a": float(la.mean()),
            "teacher_ll_per_token_b": float(lb.mean())}  # fmt: skip


def run_dpo_stage(
    cfg: DistillConfig, student: nn.Module, teacher: nn.Module, run_dir: str | Path,
    tokenizer: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the preference stage on ``student`` (trained in place) and write ``run_dir``'s
    ``results.json``, ``metrics.jsonl`` and ``student/``. Returns the results."""
    from attnkd.eval.perplexity import perplexity
    from attnkd.export import export_student
    from attnkd.models.load import count_parameters, freeze, load_causal_lm
    from attnkd.tasks.causal_lm import lm_splits

    check_dpo(cfg)
    d = cfg.dpo
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or load_causal_lm(cfg.teacher.name).tokenizer
    teacher = freeze(teacher)
    splits = lm_splits(cfg, tok)
    rng = np.random.default_rng(cfg.train.seed)
    rows = rng.choice(len(splits.train), size=d.prompts, replace=d.prompts > len(splits.train))
    train_prompts = splits.train[torch.as_tensor(rows), : d.prompt_tokens]
    held = splits.eval if d.eval_blocks == 0 else splits.eval[: d.eval_blocks]
    eval_prompts = splits.eval[: d.eval_prompts, : d.prompt_tokens]
    t0 = time.time()

    before = perplexity(student, held)
    judge_seed = cfg.train.seed + 1
    before_samples = _judge_samples(student, eval_prompts, cfg, judge_seed)
    pairs = build_pairs(student, teacher, train_prompts, cfg, cfg.train.seed)
    if d.reference == "teacher":
        ref_c, ref_r = pairs.teacher_chosen, pairs.teacher_rejected
    else:  # the stage-start student, before any update
        with torch.no_grad():
            ref_c = _policy_logprobs(student, pairs.prompts, pairs.chosen)
            ref_r = _policy_logprobs(student, pairs.prompts, pairs.rejected)
    log.info("DPO: %d pairs from %d prompts (reference: %s)", len(pairs), pairs.candidates,
             d.reference)  # fmt: skip
    pairs_s = time.time() - t0

    history = _train(student, pairs, ref_c, ref_r, cfg, run_dir)
    train_s = time.time() - t0 - pairs_s

    after = perplexity(student, held)
    after_samples = _judge_samples(student, eval_prompts, cfg, judge_seed)
    judged = win_rate(teacher, eval_prompts, after_samples, before_samples)
    teacher_ppl = perplexity(teacher, held)
    export_student(student, tok, run_dir / "student", sentence_transformers=False)
    params = {"teacher": count_parameters(teacher), "student": count_parameters(student)}
    results = {
        "name": cfg.name, "task": "causal_lm", "stage": "dpo", "reference": d.reference,
        "beta": d.beta,
        "pairs": len(pairs), "prompts": pairs.candidates,
        "samples_per_prompt": d.samples_per_prompt, "steps": d.steps, "lr": d.lr,
        "eval_split": f"{held.shape[0]} eval blocks of {held.shape[1]} tokens",
        "before": {"perplexity": before.ppl, "nll": before.nll},
        "after": {"perplexity": after.ppl, "nll": after.nll},
        "eval_tokens": after.tokens,
        # the standard causal_lm entries (the final student against the teacher), as a stage
        "teacher": {"name": cfg.teacher.name, "perplexity": teacher_ppl.ppl,
                    "nll": teacher_ppl.nll, "params": params["teacher"]},
        "student": {"perplexity": after.ppl, "nll": after.nll, "params": params["student"]},
        "retention": teacher_ppl.nll / after.nll if after.nll > 0 else float("nan"),
        "perplexity_ratio": after.ppl / teacher_ppl.ppl,
        "win_rate": judged["win_rate"], "judged_prompts": int(eval_prompts.shape[0]),
        "judge": "teacher log-likelihood of one sampled continuation each (ties 1/2)",
        "teacher_ll_per_token": {"after": judged["teacher_ll_per_token_a"],
                                 "before": judged["teacher_ll_per_token_b"]},
        "train": {"steps": d.steps, "first": history[0], "last": history[-1],
                  "pairs_seconds": pairs_s, "train_seconds": train_s,
                  "seconds_this_session": time.time() - t0},
    }  # fmt: skip
    write_json(run_dir / "results.json", results)
    return results


def run_dpo_on_run(run: Path, overrides: list[str], json_path: str | None = None) -> dict:
    """``attnkd dpo RUN``: the stage on a finished run's exported student, into ``RUN/dpo/``
    (the run's config.yaml with ``overrides``)."""
    from attnkd.config.io import load_config

    if not (run / "config.yaml").is_file() or not (run / "student" / "config.json").is_file():
        raise AttnkdError(f"{run}: not a finished run (needs config.yaml and student/)")
    cfg = load_config(run / "config.yaml", overrides)
    return _report(_stage(cfg, str(run / "student"), run / "dpo"), json_path)


def run_dpo_on_recipe(cfg: DistillConfig, json_path: str | None = None) -> dict:
    """``attnkd dpo RECIPE``: a one-stage recipe whose student is cut from the teacher first
    runs its mimic distillation (a finished run folder is reused, an interrupted one resumed);
    one whose ``student.init`` names a trained model starts from it. Output: ``RUN/dpo/``."""
    if cfg.stages or cfg.chain.assistant is not None:
        raise ConfigError(
            "stages",
            "a staged recipe runs its dpo stage itself: attnkd distill RECIPE "
            "(attnkd dpo takes a finished run or a one-stage recipe)",
        )
    check_dpo(cfg)
    run = Path(cfg.output_dir) / cfg.name
    student_path = cfg.student.init
    if cfg.student.init == "teacher":
        student_path = str(_mimic(cfg, run) / "student")
    return _report(_stage(cfg, student_path, run / "dpo"), json_path)


def _report(res: dict, json_path: str | None) -> dict:
    if json_path:
        write_json(json_path, res)
    return res


def _mimic(cfg: DistillConfig, run: Path) -> Path:
    """The recipe's mimic distillation: reused when finished, resumed when interrupted."""
    from attnkd.distill import run_distill

    if (run / "results.json").is_file() and (run / "student" / "config.json").is_file():
        log.info("mimic distillation: reusing the finished run %s", run)
    else:
        resume = (run / "checkpoints").is_dir()
        run_distill(cfg, resume=resume, progress=False)
    return run


def _stage(cfg: DistillConfig, student_path: str, stage_dir: Path) -> dict:
    from attnkd.models.load import load_causal_lm

    check_dpo(cfg)
    torch.manual_seed(cfg.train.seed)
    teacher = load_causal_lm(cfg.teacher.name, cfg.teacher.attn_implementation)
    student = load_causal_lm(student_path, cfg.student.attn_implementation, tokenizer=False).model
    res = run_dpo_stage(cfg, student, teacher.model, stage_dir, tokenizer=teacher.tokenizer)
    return {"run_dir": str(stage_dir), "student_from": student_path, **res}


def dpo_stage_kind(cfg: DistillConfig, resume: bool, progress: bool, overwrite: bool) -> dict:
    """Stage-kind runner (``run(cfg, resume, progress, overwrite)``): DPO on the model that
    ``cfg.student.init`` names (the previous stage's export) into ``output_dir/name``. The
    stage is short and keeps no step checkpoints: ``resume`` returns a finished stage's
    results and reruns an unfinished one from its start."""
    import json

    from attnkd.config.io import dump_yaml

    stage_dir = Path(cfg.output_dir) / cfg.name
    done = stage_dir / "results.json"
    if resume and done.is_file() and not overwrite:
        return json.loads(done.read_text(encoding="utf-8"))
    if cfg.student.init == "teacher":
        raise ConfigError("student.init", "a dpo stage needs a trained student to start from")
    stage_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, stage_dir / "config.yaml")
    return _stage(cfg, cfg.student.init, stage_dir)
