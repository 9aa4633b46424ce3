"""Losses on image models' feature maps and embeddings: attention transfer and relational KD.

Pure functions of tensors. Feature maps are (B, C, H, W) (CNN) or (B, N, D) tokens (ViT: the
"spatial" axis is N, the "channel" axis D). Embeddings are (B, D). Teacher and student widths
may differ in every loss here except :func:`channel_attention_loss` (use a projector there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _spatial(f: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H*W); (B, N, D) -> (B, D, N)."""
    if f.dim() == 4:
        return f.flatten(2)
    if f.dim() == 3:
        return f.transpose(1, 2)
    raise ValueError(f"feature map must be (B, C, H, W) or (B, N, D), got shape {tuple(f.shape)}")


def attention_map(f: Tensor, p: float = 2.0, normalize: bool = True) -> Tensor:
    """Spatial attention ``Q = Σ_c |F_c|^p`` (Zagoruyko & Komodakis 2017), flattened.

    ``f``: (B, C, H, W) or (B, N, D); returns (B, H*W) (or (B, N)), L2-normalised per row
    when ``normalize``.
    """
    q = _spatial(f).abs().pow(p).sum(1)
    return F.normalize(q, dim=1) if normalize else q


def _match(ms: Tensor, mt: Tensor, fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Bring two unnormalised (B, H*W) CNN maps to the smaller spatial size (average pooling)."""
    if ms.shape == mt.shape:
        return ms, mt
    if fs.dim() != 4 or ft.dim() != 4 or ms.shape[0] != mt.shape[0]:
        raise ValueError(f"attention maps differ in shape: {tuple(ms.shape)} vs {tuple(mt.shape)}")
    hs, ht = fs.shape[-2:], ft.shape[-2:]
    size = min(hs, ht, key=lambda s: s[0] * s[1])
    ms = F.adaptive_avg_pool2d(ms.view(-1, 1, *hs), size).flatten(1)
    mt = F.adaptive_avg_pool2d(mt.view(-1, 1, *ht), size).flatten(1)
    return ms, mt


def at_loss(student: Tensor, teacher: Tensor, p: float = 2.0, mode: str = "mean") -> Tensor:
    """Attention transfer between one student and one teacher feature map.

    ``mode='paper'``: ``½·mean_b ‖Q_S/‖Q_S‖ − Q_T/‖Q_T‖‖₂`` (the paper's formula, β left to the
    term weight); ``mode='mean'``: ``mean_{b,j} (Q_S/‖Q_S‖ − Q_T/‖Q_T‖)²`` (the authors' code and
    most reimplementations: squared and averaged over positions). Maps of different spatial size
    are average-pooled to the smaller one. Returns a scalar.
    """
    ms, mt = _match(attention_map(student, p, False), attention_map(teacher, p, False),
                    student, teacher)  # fmt: skip
    d = F.normalize(ms, dim=1) - F.normalize(mt, dim=1)
    if mode == "paper":
        return 0.5 * d.norm(dim=1).mean()
    if mode == "mean":
        return d.pow(2).mean()
    raise ValueError(f"AT mode must be 'paper' or 'mean', got '{mode}'")


def channel_attention(f: Tensor) -> Tensor:
    """ECA-style channel descriptor (Wang et al. 2020): global average pool per channel,
    L2-normalised over channels. (B, C, H, W) or (B, N, D) -> (B, C)."""
    return F.normalize(_spatial(f).mean(2), dim=1)


def channel_attention_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean (a_S − a_T)²`` of the two channel descriptors (B, C) (same C: project first)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"channel descriptors differ in shape: {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    return (student - teacher).pow(2).mean()


def self_attention_distillation(maps: list[Tensor], p: float = 2.0) -> Tensor:
    """Self attention distillation (Hou et al. 2019): each deeper map teaches the one before it.

    ``maps``: one network's feature maps, shallow to deep, each (B, C_i, H_i, W_i). For every
    consecutive pair the deeper attention map (detached: a target) is resized bilinearly to the
    shallower one's size; loss = Σ_i mean (Q_i/‖Q_i‖ − up(Q_{i+1})/‖·‖)².
    """
    if len(maps) < 2:
        raise ValueError("self attention distillation needs at least two feature maps")
    total = maps[0].new_zeros(())
    for shallow, deep in zip(maps[:-1], maps[1:], strict=True):
        qs = attention_map(shallow, p, False).view(shallow.shape[0], 1, *shallow.shape[-2:])
        qd = attention_map(deep.detach(), p, False).view(deep.shape[0], 1, *deep.shape[-2:])
        qd = F.interpolate(qd, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        total = total + (F.normalize(qs.flatten(1), dim=1) - F.normalize(qd.flatten(1), dim=1)
                         ).pow(2).mean()  # fmt: skip
    return total


def _pdist(e: Tensor) -> Tensor:
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None] - 2 * e @ e.T).clamp_min(1e-12)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))


def rkd_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance loss (Park et al. 2019): Huber between pairwise distances of the batch's
    embeddings, each set divided by its mean off-diagonal distance. (B, Ds), (B, Dt) -> scalar."""
    with torch.no_grad():
        dt = _pdist(teacher.float())
        dt = dt / dt[dt > 0].mean()
    ds = _pdist(student.float())
    ds = ds / ds[ds > 0].mean()
    return F.smooth_l1_loss(ds, dt)


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e[None] - e[:, None], p=2, dim=2)  # (B, B, D): e_j - e_i, unit
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of angle at vertex i


def rkd_angle(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle loss (Park et al. 2019): Huber between the cosines of all triplet angles
    ∠(e_j − e_i, e_k − e_i). (B, Ds), (B, Dt) -> scalar."""
    with torch.no_grad():
        at = _angles(teacher.float())
    return F.smooth_l1_loss(_angles(student.float()), at)


def similarity_preserving(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019): ``‖G_S − G_T‖_F² / B²`` where
    ``G = rownorm(A Aᵀ)`` for the batch's flattened activations A (B, ·)."""
    gs = F.normalize(student.flatten(1) @ student.flatten(1).T, dim=1)
    gt = F.normalize(teacher.flatten(1) @ teacher.flatten(1).T, dim=1)
    return (gs - gt).pow(2).sum() / student.shape[0] ** 2


def pkt(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018) with the cosine kernel:
    ``K = (cos + 1)/2`` over the batch, rows normalised to conditional probabilities,
    ``mean_i KL(P_T,i ‖ P_S,i)`` summed over j. (B, Ds), (B, Dt) -> scalar."""

    def probs(e: Tensor) -> Tensor:
        e = F.normalize(e.flatten(1).float(), dim=1)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdim=True)

    ps, pt = probs(student), probs(teacher)
    return (pt * torch.log((pt + eps) / (ps + eps))).sum(1).mean()


def deit_distillation(dist_logits: Tensor, teacher_logits: Tensor, hard: bool,
                      temperature: float = 1.0) -> Tensor:  # fmt: skip
    """DeiT's distillation-token loss (Touvron et al. 2021) on the distillation head.

    hard: ``CE(z_dist, argmax z_T)``; soft: ``τ²·KL(softmax(z_T/τ) ‖ softmax(z_dist/τ))``
    averaged over the batch. (B, classes) each -> scalar.
    """
    if hard:
        return F.cross_entropy(dist_logits, teacher_logits.argmax(-1))
    t = temperature
    return F.kl_div(F.log_softmax(dist_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t  # fmt: skip
