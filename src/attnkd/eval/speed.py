"""Encode throughput of several models measured side by side, interleaved, in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Throughput:
    name: str
    sentences_per_s: float
    """Median over rounds."""
    rounds: list[float]


@torch.no_grad()
def measure_throughput(
    models: dict[str, nn.Module],
    tokenizer,
    sentences: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    rounds: int = 5,
    warmup: int = 1,
) -> dict[str, Throughput]:
    """Sentences/s of each model encoding the same batches; models alternate each round so
    background load hits all of them alike. Tokenisation is done once, outside the timing.
    ``tokenizer`` is one for all, or a mapping model name -> its own tokenizer (a teacher with
    another vocabulary, e.g. MPNet beside BERT students)."""

    def tokenize(tok) -> list:
        return [
            tok(list(sentences[i : i + batch_size]), padding=True, truncation=True,
                max_length=max_length, return_tensors="pt")
            for i in range(0, len(sentences), batch_size)
        ]  # fmt: skip

    own = isinstance(tokenizer, Mapping)
    shared = None if own else tokenize(tokenizer)
    batches = {k: tokenize(tokenizer[k]) if own else shared for k in models}
    for m in models.values():
        m.eval()
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(warmup + rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            for b in batches[name]:
                m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(len(sentences) / dt)
    return {k: Throughput(k, statistics.median(v), v) for k, v in times.items()}


@dataclass
class TokenThroughput:
    name: str
    tokens_per_s: float
    """Median over rounds (a full forward over every token of the blocks)."""
    rounds: list[float]


@torch.no_grad()
def measure_token_throughput(
    models: dict[str, nn.Module],
    blocks: torch.Tensor,
    batch_size: int = 4,
    rounds: int = 3,
    warmup: int = 1,
) -> dict[str, TokenThroughput]:
    """Forward tokens/s of causal LMs over the same (n, length) blocks of token ids; models
    alternate each round so background load hits all of them alike."""
    for m in models.values():
        m.eval()
    times: dict[str, list[float]] = {k: [] for k in models}
    tokens = blocks.numel()
    for r in range(warmup + rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            for i in range(0, len(blocks), batch_size):
                m(input_ids=blocks[i : i + batch_size])
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(tokens / dt)
    return {k: TokenThroughput(k, statistics.median(v), v) for k, v in times.items()}
