"""Dataset condensation: learn N synthetic images per class that train a network from scratch.

Methods (``method``):

- ``datadam`` (Sajedi et al. 2023, "DataDAM: Efficient Dataset Distillation with Attention
  Matching"): every iteration a network is freshly initialised at random; for each class, the
  batch-mean of the normalised spatial attention maps (:func:`attnkd.losses.spatial.attention_map`,
  power ``p``) of every stage's conv-norm-ReLU output (before the stage's pooling, where the
  authors hook their ReLUs) is matched between a real batch and the class's synthetic images,
  ``attention_weight · Σ_stages ‖E_real − E_syn‖²``, plus ``mmd_weight`` times the distance of
  the mean final embeddings (an MMD with a linear kernel). The authors' code weighs the two
  100 : 1; at 1 : 1 the attention term's gradient on the pixels is about 1% of the MMD term's
  (measured on a random ConvNet-3 and Fashion-MNIST: 0.03 vs 1.7) and DataDAM reduces to DM.
- ``dm`` (Zhao & Bilen 2023, distribution matching): the embedding-mean term alone.
- ``random``: a random real subset of the same size (no optimisation).

Synthetic images start from random real images of their class, live in normalised pixel space and
are clamped to the valid pixel range after every step. With ``augment`` (on by default), each
class's real batch and synthetic images go through the same random transform every iteration
before matching (differentiable siamese augmentation, Zhao & Bilen 2021, in a reduced form: one
shift of up to ``shift`` pixels with black fill and one left-right flip per class and iteration;
the papers also scale, rotate and change colour).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkd.capture.images import FeatureCapture, VisionTap
from attnkd.errors import ConfigError
from attnkd.losses.spatial import attention_map
from attnkd.vision.data import MEAN, STD, to_float
from attnkd.vision.idx import ImageSet
from attnkd.vision.models import build_model

log = logging.getLogger("attnkd")

METHODS = ("datadam", "dm", "random")
LOW, HIGH = -MEAN / STD, (1 - MEAN) / STD
"""The normalised values of a black and a white pixel: synthetic images stay in between."""


@dataclass
class CondenseConfig:
    """One condensation run."""

    method: str = "datadam"
    images_per_class: int = 10
    iterations: int = 200
    lr: float = 1.0
    """SGD step size on the synthetic pixels (momentum 0.5), as in distribution matching."""
    scale_lr: bool = False
    """Step with ``lr · images_per_class``: each class's loss compares the MEAN over its N
    synthetic images, so an image's gradient shrinks as 1/N; scaling gives every image the step
    it would have at N = 1 (the same as summing instead of averaging over the synthetic set)."""
    real_batch: int = 128
    """Real images of one class per iteration."""
    power: float = 1.0
    """Exponent p of the attention maps Σ_c |F_c|^p (the authors' released code uses 1; at the
    weight 100, p = 4 makes the pixel steps unstable)."""
    mmd_weight: float = 1.0
    attention_weight: float = 100.0
    """Weight of the attention-matching term ('datadam'); the authors' code uses 100 against an
    embedding weight of 1."""
    net: str = "cnn:condense"
    seed: int = 0
    augment: bool = True
    """Siamese augmentation: the same random shift/flip for a class's real and synthetic images."""
    shift: int = 3
    """Largest shift (pixels) of the siamese augmentation."""
    nets: int = 1
    """Random networks freshly initialised per iteration; the step follows the mean of their
    losses, each class matched on the same real batch and augmentation in every network (a
    less noisy estimate of the expectation over initialisations the methods minimise)."""


@dataclass
class CondenseResult:
    """Synthetic images (N·classes, 1, H, W) normalised, their labels, and the loss curve."""

    images: Tensor
    labels: Tensor
    losses: list[float] = field(default_factory=list)
    moved: float = 0.0
    """Mean absolute change of the pixels from their real starting images (normalised units)."""


def check_config(cfg: CondenseConfig) -> None:
    """Raise :class:`~attnkd.errors.ConfigError` naming the first bad field of ``cfg``."""
    if cfg.method not in METHODS:
        raise ConfigError("method", f"must be one of {METHODS}, got '{cfg.method}'")
    checks = (("images_per_class", cfg.images_per_class >= 1, "an integer >= 1"),
              ("iterations", cfg.iterations >= 0, "an integer >= 0"),
              ("lr", cfg.lr > 0, "a number > 0"), ("real_batch", cfg.real_batch >= 1, ">= 1"),
              ("power", cfg.power > 0, "a number > 0"), ("shift", cfg.shift >= 0, ">= 0"),
              ("nets", cfg.nets >= 1, "an integer >= 1"),
              ("mmd_weight", cfg.mmd_weight >= 0, "a number >= 0"),
              ("attention_weight", cfg.attention_weight >= 0, "a number >= 0"))  # fmt: skip
    for key, ok, want in checks:
        if not ok:
            raise ConfigError(key, f"must be {want}, got {getattr(cfg, key)}")


def siamese_augment(x: Tensor, dy: int, dx: int, flip: bool) -> Tensor:
    """Shift ``x`` (B, C, H, W) by (dy, dx) pixels with black fill, then flip it left-right when
    ``flip``: the same transform for every image, differentiable in ``x``."""
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    if p:
        x = F.pad(x, (p, p, p, p), value=LOW)[..., p - dy : p - dy + h, p - dx : p - dx + w]
    return x.flip(-1) if flip else x


def _by_class(data: ImageSet, num_classes: int) -> list[Tensor]:
    return [torch.nonzero(data.labels == c).flatten() for c in range(num_classes)]


def matching_loss(net: nn.Module, real: Tensor, syn: Tensor, method: str, power: float = 1.0,
                  mmd_weight: float = 1.0, attention_weight: float = 100.0) -> Tensor:  # fmt: skip
    """One class's matching loss for ``net``: real (B, C, H, W) and synthetic (N, C, H, W).

    ``dm``: ``mmd_weight · ‖mean e_real − mean e_syn‖²`` of the head-input embeddings;
    ``datadam`` adds ``attention_weight · Σ_stages ‖mean_b Q_real − mean_b Q_syn‖²`` of the
    L2-normalised attention maps of every stage's last conv-norm-ReLU output (before pooling).
    """
    stages = int(net.config.num_hidden_layers)
    taps = [VisionTap("embedding")]
    if method == "datadam":
        taps += [VisionTap("group", i) for i in range(stages)]
    cap = FeatureCapture(net, taps)
    with torch.no_grad(), cap:
        net(real)
    real_taps = dict(cap.taps.tensors)
    cap.taps.clear()
    with cap:
        net(syn)
    syn_taps = cap.taps.tensors
    emb_r, emb_s = real_taps[("embedding", 0)], syn_taps[("embedding", 0)]
    loss = mmd_weight * (emb_r.mean(0) - emb_s.mean(0)).pow(2).sum()
    if method == "datadam":
        for i in range(stages):
            qr = attention_map(real_taps[("group", i)], power).mean(0)
            qs = attention_map(syn_taps[("group", i)], power).mean(0)
            loss = loss + attention_weight * (qr - qs).pow(2).sum()
    return loss


def condense(data: ImageSet, cfg: CondenseConfig, num_classes: int = 10) -> CondenseResult:
    """Learn (or, for 'random', pick) ``cfg.images_per_class`` images per class from ``data``."""
    check_config(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    pools = _by_class(data, num_classes)
    for c, pool in enumerate(pools):
        if len(pool) < cfg.images_per_class:
            raise ConfigError("images_per_class", f"class {c} has only {len(pool)} images, "
                              f"fewer than {cfg.images_per_class}")  # fmt: skip
    start = torch.cat(
        [p[torch.randperm(len(p), generator=g)[: cfg.images_per_class]] for p in pools]
    )
    labels = torch.arange(num_classes).repeat_interleave(cfg.images_per_class)
    syn = to_float(data.images[start]).clone()
    if cfg.method == "random":
        return CondenseResult(syn, labels)
    syn.requires_grad_(True)
    n = cfg.images_per_class
    opt = torch.optim.SGD([syn], lr=cfg.lr * (n if cfg.scale_lr else 1), momentum=0.5)
    losses = []
    for it in range(cfg.iterations):
        torch.manual_seed(cfg.seed * 1_000_003 + it)  # fresh random networks every iteration
        nets = [build_model(cfg.net).requires_grad_(False) for _ in range(cfg.nets)]
        total = syn.new_zeros(())
        for c, pool in enumerate(pools):
            pick = pool[torch.randint(len(pool), (cfg.real_batch,), generator=g)]
            real, mine = to_float(data.images[pick]), syn[c * n : (c + 1) * n]
            if cfg.augment:
                dy, dx = torch.randint(-cfg.shift, cfg.shift + 1, (2,), generator=g).tolist()
                flip = bool(torch.rand((), generator=g) < 0.5)
                real, mine = (siamese_augment(t, dy, dx, flip) for t in (real, mine))
            for net in nets:
                total = total + matching_loss(net, real, mine, cfg.method, cfg.power,
                                              cfg.mmd_weight, cfg.attention_weight) / cfg.nets
        opt.zero_grad()
        total.backward()
        opt.step()
        with torch.no_grad():
            syn.clamp_(LOW, HIGH)
        losses.append(float(total.detach()) / num_classes)
        if it % 50 == 0:
            log.info("condense %s ipc=%d iteration %d: loss %.5f", cfg.method, n, it, losses[-1])
    moved = float((syn.detach() - to_float(data.images[start])).abs().mean())
    return CondenseResult(syn.detach(), labels, losses, moved)
