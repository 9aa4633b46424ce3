"""Loss terms of the image-classification task: CE, KD, attention transfer, relational KD.

They read :class:`attnkd.capture.images.VisionTaps` (feature maps ``fmap@i`` of CNN stages or ViT
blocks, pooled ``embedding``, ``logits``, ``dist_logits``) and call the pure functions in
:mod:`attnkd.losses.spatial`. Their ``forward(t, s, labels)`` takes the batch's class labels
(B,) where the transformer terms take an attention mask.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnkd.capture.images import VisionTap
from attnkd.losses import spatial
from attnkd.losses.logits import hinton_kd
from attnkd.losses.terms.base import LossTerm, register


class VisionTerm(LossTerm):
    """Base of the image terms: taps are :class:`VisionTap` s at the configured layers."""

    alignment = "images"

    def taps(self) -> tuple[list[VisionTap], list[VisionTap]]:
        t = [VisionTap(k, self.t_layer) for k in self.teacher_kinds]
        return t, [VisionTap(k, self.s_layer) for k in self.student_kinds]

    def forward(self, t, s, labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError


@register("ce", "cross-entropy of the student's logits with the true labels (images)")
class CrossEntropyTerm(VisionTerm):
    student_kinds = ("logits",)

    def forward(self, t, s, labels):
        return {"ce": F.cross_entropy(s.get("logits"), labels)}


@register("image_kd", "Hinton KD on class logits, τ²·KL(teacher‖student) at `temperature`")
class ImageKDTerm(VisionTerm):
    teacher_kinds = student_kinds = ("logits",)

    def forward(self, t, s, labels):
        kd = hinton_kd(s.get("logits"), t.get("logits"), temperature=self.cfg.temperature)
        return {"kd": kd.kd}


@register("at", "attention transfer, Σ_c|F_c|² maps, squared-mean form (Zagoruyko & Komodakis)")
class AttentionTransferTerm(VisionTerm):
    """AT between teacher stage ``teacher_layer`` and student stage ``student_layer``."""

    teacher_kinds = student_kinds = ("fmap",)
    mode = "mean"

    def forward(self, t, s, labels):
        fs, ft = s.get("fmap", self.s_layer), t.get("fmap", self.t_layer)
        return {"at": spatial.at_loss(fs, ft, mode=self.mode)}


@register("at_paper", "attention transfer in the paper's form, ½‖Q_S/‖Q_S‖ − Q_T/‖Q_T‖‖₂")
class AttentionTransferPaperTerm(AttentionTransferTerm):
    mode = "paper"


@register("at_group", "attention transfer at the end of each CNN group, before its pooling")
class AttentionTransferGroupTerm(AttentionTransferTerm):
    """AT on the stage's last conv-norm-ReLU output (the paper's placement: the end of a group
    of blocks, at the group's full resolution) instead of the pooled stage output."""

    teacher_kinds = student_kinds = ("group",)

    def forward(self, t, s, labels):
        fs, ft = s.get("group", self.s_layer), t.get("group", self.t_layer)
        return {"at": spatial.at_loss(fs, ft, mode=self.mode)}


@register("channel_at", "ECA-style channel attention (GAP per channel, L2-normalised) matching")
class ChannelAttentionTerm(VisionTerm):
    """When widths differ, the teacher's descriptor is averaged over equal channel groups down to
    the student's width (parameter-free)."""

    teacher_kinds = student_kinds = ("fmap",)

    def forward(self, t, s, labels):
        a_s = spatial.channel_attention(s.get("fmap", self.s_layer))
        a_t = spatial.channel_attention(t.get("fmap", self.t_layer))
        if a_t.shape[1] != a_s.shape[1]:
            a_t = F.normalize(F.adaptive_avg_pool1d(a_t[:, None], a_s.shape[1])[:, 0], dim=1)
        return {"channel_at": spatial.channel_attention_loss(a_s, a_t)}


@register("sad", "self attention distillation: each deeper stage's AT map teaches the one before")
class SelfAttentionDistillationTerm(VisionTerm):
    """Student only; uses stages 0..``student_layer``."""

    def taps(self):
        return [], [VisionTap("fmap", i) for i in range(self.s_layer + 1)]

    def forward(self, t, s, labels):
        maps = [s.get("fmap", i) for i in range(self.s_layer + 1)]
        return {"sad": spatial.self_attention_distillation(maps)}


class _EmbeddingTerm(VisionTerm):
    teacher_kinds = student_kinds = ("embedding",)
    fn = staticmethod(spatial.rkd_distance)
    key = ""

    def forward(self, t, s, labels):
        return {self.key: self.fn(s.get("embedding"), t.get("embedding"))}


@register("rkd_distance", "RKD distance: pairwise embedding distances (Park et al. 2019)")
class RkdDistanceTerm(_EmbeddingTerm):
    key = "distance"


@register("rkd_angle", "RKD angle: triplet angles of embeddings (Park et al. 2019)")
class RkdAngleTerm(_EmbeddingTerm):
    fn = staticmethod(spatial.rkd_angle)
    key = "angle"


@register("pkt", "probabilistic knowledge transfer on embeddings (Passalis & Tefas 2018)")
class PktTerm(_EmbeddingTerm):
    fn = staticmethod(spatial.pkt)
    key = "pkt"


@register("sp", "similarity-preserving KD on stage feature maps (Tung & Mori 2019)")
class SimilarityPreservingTerm(VisionTerm):
    teacher_kinds = student_kinds = ("fmap",)

    def forward(self, t, s, labels):
        fs, ft = s.get("fmap", self.s_layer), t.get("fmap", self.t_layer)
        return {"sp": spatial.similarity_preserving(fs, ft)}


@register("deit_hard", "DeiT distillation token, hard teacher labels (Touvron et al. 2021)")
class DeitHardTerm(VisionTerm):
    teacher_kinds = ("logits",)
    student_kinds = ("dist_logits",)
    hard = True

    def forward(self, t, s, labels):
        value = spatial.deit_distillation(
            s.get("dist_logits"), t.get("logits"), self.hard, self.cfg.temperature
        )
        return {"deit": value}


@register("deit_soft", "DeiT distillation token, soft KL at `temperature` (Touvron et al. 2021)")
class DeitSoftTerm(DeitHardTerm):
    hard = False
