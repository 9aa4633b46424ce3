"""Tiny model, data and step function shared by the engine tests (CPU, milliseconds)."""

from __future__ import annotations

import torch
from torch import nn

from attnkd.config.schema import TrainConfig
from attnkd.engine import ShuffledBatches, StepOutput


class Tiny(nn.Module):
    """x (B, 4) -> (B,); has biases, a LayerNorm, an Embedding (unused bias table) and dropout."""

    def __init__(self, dropout: float = 0.3, hidden: int = 16):
        super().__init__()
        self.inp = nn.Linear(4, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.table = nn.Embedding(3, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.norm(self.inp(x))) + self.table.weight[0]
        return self.out(self.drop(h)).squeeze(-1)


def make_items(n: int = 48, seed: int = 123) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return list(zip(x, y))


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def make_batches(batch_size: int = 4, seed: int = 0, shuffle: bool = True) -> ShuffledBatches:
    return ShuffledBatches(make_items(), batch_size, collate, seed=seed, shuffle=shuffle)


def make_model(dropout: float = 0.3, seed: int = 7) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(dropout)


def mse_step(model: nn.Module, record: list | None = None):
    """Step function: mean squared error, with 'mse' and 'mae' terms; ``record`` gets each value."""

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        x, y = batch
        pred = model(x)
        loss = ((pred - y) ** 2).mean()
        terms = {"mse": loss.item(), "mae": (pred - y).abs().mean().item()}
        if record is not None:
            record.append(terms)
        return StepOutput(loss, terms, num_items=len(x))

    return step


def cfg(**kw) -> TrainConfig:
    base = dict(
        lr=1e-2,
        max_steps=12,
        warmup_ratio=0.25,
        batch_size=4,
        eval_every=0,
        save_every=0,
        log_every=0,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def interrupt_after(inner, n_micro: int):
    """``inner`` (a step function) that raises KeyboardInterrupt on its ``n_micro + 1``-th call:
    a run cut short after ``n_micro`` micro-batches."""
    calls = [0]

    def step(batch):
        calls[0] += 1
        if calls[0] > n_micro:
            raise KeyboardInterrupt
        return inner(batch)

    return step
