"""Image classifiers built from a name: small CNNs (stages of conv-BN-ReLU) and a small ViT.

Builder names (``student.init`` / ``teacher.name`` in a recipe): ``cnn:large`` (the
Fashion-MNIST teacher), ``cnn:teacher``, ``cnn:small``, ``cnn:tiny``, ``cnn:condense`` (the
condensation papers' ConvNet-3), ``vit:tiny`` (with a DeiT distillation token). Each model carries
an :class:`ImageModelConfig` as ``.config`` (so geometry, layer indices and export work as for the
transformer tasks) and says where its taps live by module path (:meth:`tap_path`).

CNN: stage ``i`` is ``convs`` 3×3 conv-BN-ReLU layers of ``widths[i]`` channels followed by 2×2
max pooling (except the last stage); its output is feature map ``i`` (the AT tap). ViT (Dosovitskiy
et al. 2021; DeiT, Touvron et al. 2021): 4×4 patches, class and distillation tokens, pre-norm
blocks with separate q/k/v projections (so q/k/v capture works by hooks), two heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkd.errors import AttnkdError
from attnkd.registry import Registry


@dataclass
class ImageModelConfig:
    """Everything needed to rebuild an image model (written next to its weights)."""

    builder: str = "cnn:teacher"
    kind: str = "cnn"
    """'cnn' or 'vit'."""
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    """CNN: channels of each stage; ViT: ``[width]``."""
    convs: list[int] = field(default_factory=lambda: [1, 1, 2])
    """CNN: conv layers per stage."""
    depth: int = 0
    """ViT blocks."""
    heads: int = 1
    patch: int = 4
    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    dropout: float = 0.0
    norm: str = "batch"
    """CNN normalisation: 'batch' (BatchNorm) or 'instance' (per-image, as dataset
    condensation's ConvNet uses: statistics do not depend on the batch's classes)."""
    pool: str = "max"
    """CNN: 2×2 pooling, 'max' or 'avg' (the condensation papers' ConvNet)."""
    head: str = "gap"
    """CNN: 'gap' (pool between stages, global average pool before the linear head) or 'flatten'
    (pool after every stage, flatten the last map into the head, as the papers' ConvNet-3)."""
    model_type: str = "attnkd_cnn"

    # the attributes attnkd.models.adapters.geometry reads
    @property
    def num_hidden_layers(self) -> int:
        return self.depth if self.kind == "vit" else len(self.widths)

    @property
    def hidden_size(self) -> int:
        return self.widths[-1]

    @property
    def num_attention_heads(self) -> int:
        return self.heads

    def to_dict(self) -> dict:
        return asdict(self)


BUILDERS: Registry[ImageModelConfig] = Registry("image model")
for _name, _cfg in {
    "cnn:teacher": ImageModelConfig("cnn:teacher", widths=[32, 64, 128], convs=[1, 1, 2]),
    "cnn:large": ImageModelConfig("cnn:large", widths=[32, 64, 128], convs=[2, 2, 2]),
    "cnn:small": ImageModelConfig("cnn:small", widths=[16, 32, 60], convs=[1, 1, 2]),
    "cnn:tiny": ImageModelConfig("cnn:tiny", widths=[4, 8, 8], convs=[1, 1, 1]),
    "cnn:condense": ImageModelConfig(  # ConvNet-3 of DC/DM/DataDAM: 28 -> 14 -> 7 -> 3
        "cnn:condense", widths=[128, 128, 128], convs=[1, 1, 1], norm="instance", pool="avg",
        head="flatten",
    ),
    "cnn:condense-micro": ImageModelConfig(  # the same layout, 8 channels (tests)
        "cnn:condense-micro", widths=[8, 8, 8], convs=[1, 1, 1], norm="instance", pool="avg",
        head="flatten",
    ),
    "vit:tiny": ImageModelConfig(
        "vit:tiny", kind="vit", widths=[64], depth=4, heads=4, patch=7, model_type="attnkd_vit"
    ),
    "vit:micro": ImageModelConfig(
        "vit:micro", kind="vit", widths=[16], depth=2, heads=2, patch=7, model_type="attnkd_vit"
    ),
}.items():
    BUILDERS.register(_name)(_cfg)


def _conv(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    if norm not in ("batch", "instance"):
        raise ValueError(f"norm must be 'batch' or 'instance', got '{norm}'")
    layer = nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(cout, cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), layer, nn.ReLU())


class ImageCNN(nn.Module):
    """Stages of conv-norm-ReLU (+ 2×2 pooling), then a linear head on the globally averaged
    (``head='gap'``; pooling between stages) or flattened (``'flatten'``; pooling after every
    stage) last feature map.

    ``forward(pixel_values (B, C, H, W) float) -> logits (B, classes)``.
    """

    def __init__(self, config: ImageModelConfig):
        super().__init__()
        self.config = config
        if config.pool not in ("max", "avg") or config.head not in ("gap", "flatten"):
            raise ValueError(f"pool must be 'max'/'avg' and head 'gap'/'flatten', got "
                             f"'{config.pool}'/'{config.head}'")  # fmt: skip
        pool = nn.MaxPool2d if config.pool == "max" else nn.AvgPool2d
        flatten = config.head == "flatten"
        stages, cin, size = [], config.in_channels, config.image_size
        for i, (w, n) in enumerate(zip(config.widths, config.convs, strict=True)):
            layers = [_conv(cin if j == 0 else w, w, config.norm) for j in range(n)]
            if flatten or i < len(config.widths) - 1:
                layers.append(pool(2))
                size //= 2
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(cin * size * size if flatten else cin, config.num_classes)

    def tap_path(self, kind: str, layer: int = 0) -> str:
        """Module path of a tap: 'fmap' stage output, 'group' the stage's last conv-norm-ReLU
        (the end of the group, before its pooling), 'embedding' head input, 'logits'."""
        if kind == "group":
            return f"stages.{layer}.{self.config.convs[layer] - 1}"
        return {"fmap": f"stages.{layer}", "embedding": "head", "logits": "head"}[kind]

    def forward(self, pixel_values: Tensor, **_: object) -> Tensor:
        x = pixel_values
        for stage in self.stages:
            x = stage(x)
        x = x.flatten(1) if self.config.head == "flatten" else x.mean(dim=(2, 3))
        return self.head(self.drop(x))


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, w = x.shape
        q, k, v = (
            m(x).view(b, n, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageViT(nn.Module):
    """A small ViT with a class token and a DeiT distillation token (tokens 0 and 1).

    ``forward(pixel_values) -> logits (B, classes)``: in training mode the class head's output;
    in eval mode the mean of the class and distillation heads (DeiT's inference rule). The
    distillation head's output is the tap ``dist_logits``.
    """

    def __init__(self, config: ImageModelConfig):
        super().__init__()
        self.config = config
        w, p = config.widths[0], config.patch
        n = (config.image_size // p) ** 2
        self.patch_embed = nn.Conv2d(config.in_channels, w, p, stride=p)
        self.tokens = nn.Parameter(torch.zeros(1, 2, w))
        self.pos = nn.Parameter(torch.randn(1, n + 2, w) * 0.02)
        self.blocks = nn.ModuleList(_Block(w, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, config.num_classes)
        self.head_dist = nn.Linear(w, config.num_classes)

    def tap_path(self, kind: str, layer: int = 0) -> str:
        """Module path of a tap: 'fmap' block output, 'q'/'k'/'v' projections, heads."""
        return {
            "fmap": f"blocks.{layer}", "q": f"blocks.{layer}.attn.q",
            "k": f"blocks.{layer}.attn.k", "v": f"blocks.{layer}.attn.v",
            "logits": "head", "dist_logits": "head_dist", "embedding": "head",
        }[kind]  # fmt: skip

    def forward(self, pixel_values: Tensor, **_: object) -> Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.tokens.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        cls, dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
        return cls if self.training else (cls + dist) / 2


NO_TEACHER = "none"


class _NoTeacherConfig:
    num_hidden_layers = 1
    hidden_size = 1
    num_attention_heads = 1
    model_type = "none"


class NoTeacher(nn.Module):
    """Stands in for the teacher when a run trains from labels only (``teacher.name: none``)."""

    config = _NoTeacherConfig()

    def __init__(self):
        super().__init__()
        self.none = nn.Parameter(torch.zeros(0), requires_grad=False)  # has a device and dtype

    def forward(self, pixel_values: Tensor, **_: object) -> Tensor:
        raise AttnkdError("a loss term needs the teacher, but teacher.name is 'none'")


def build_model(config: ImageModelConfig | str) -> nn.Module:
    """A freshly initialised model from a builder name or a full config."""
    if isinstance(config, str):
        config = ImageModelConfig(**BUILDERS.get(config).to_dict())
    return ImageViT(config) if config.kind == "vit" else ImageCNN(config)
