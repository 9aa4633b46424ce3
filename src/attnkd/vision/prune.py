"""Channel pruning of a trained CNN by group, as the starting point of AT recovery.

A group is one stage of :class:`attnkd.vision.models.ImageCNN` (its convs share a width). Every
conv of the stage keeps its ``keep`` most important output channels, ranked by the absolute
BatchNorm scale ``|γ|`` (``criterion='bn'``, Liu et al. 2017, network slimming) or by the L1
norm of the filter (``criterion='l1'``, Li et al. 2017); the next layer's input channels and the
head's columns follow. The pruned network is then recovered by training it with attention
transfer from the unpruned one on each group's feature map (recipe ``fmnist-prune-at.yaml``;
Spatial attention distilling after channel pruning, see METHODS.md section 3).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from attnkd.vision.models import ImageCNN, ImageModelConfig, build_model


def _convs(model: ImageCNN) -> list[tuple[int, nn.Conv2d, nn.Module]]:
    out = []
    for i, stage in enumerate(model.stages):
        for block in stage:
            if isinstance(block, nn.Sequential):
                out.append((i, block[0], block[1]))
    return out


def _importance(conv: nn.Conv2d, norm: nn.Module, criterion: str) -> Tensor:
    if criterion == "bn":
        return norm.weight.detach().abs()
    if criterion == "l1":
        return conv.weight.detach().abs().sum(dim=(1, 2, 3))
    raise ValueError(f"criterion must be 'bn' or 'l1', got '{criterion}'")


@torch.no_grad()
def prune_channels(model: ImageCNN, ratio: float, criterion: str = "bn") -> ImageCNN:
    """A new, narrower CNN keeping ``1 - ratio`` of every stage's channels (at least one)."""
    if not isinstance(model, ImageCNN):
        raise ValueError("channel pruning needs an attnkd CNN (cnn:* builders)")
    if model.config.head != "gap":
        raise ValueError("channel pruning needs a CNN with a global-average-pool head ('gap')")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    widths = [max(1, round(w * (1 - ratio))) for w in model.config.widths]
    fields = copy.deepcopy(model.config.to_dict())
    fields.update(widths=widths, builder=f"{model.config.builder} pruned {ratio:g} ({criterion})")
    cfg = ImageModelConfig(**fields)
    pruned = build_model(cfg)
    keep_in = torch.arange(model.config.in_channels)
    for (i, conv, norm), (_, pconv, pnorm) in zip(_convs(model), _convs(pruned), strict=True):
        keep = _importance(conv, norm, criterion).argsort(descending=True)[: widths[i]]
        keep = keep.sort().values
        pconv.weight.copy_(conv.weight[keep][:, keep_in])
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(norm, name, None) is not None:
                getattr(pnorm, name).copy_(getattr(norm, name)[keep])
        keep_in = keep
    pruned.head.weight.copy_(model.head.weight[:, keep_in])
    pruned.head.bias.copy_(model.head.bias)
    return pruned
