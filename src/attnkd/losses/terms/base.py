"""Loss-term machinery: the registry, the base class and how terms are built and tapped.

A term declares which taps it needs from each model (so capture installs only those hooks),
then maps them to one of the pure functions in :mod:`attnkd.losses`. Terms with learned
projectors are ``nn.Module`` s whose parameters are trained with the student.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from attnkd.capture import Tap, Taps
from attnkd.config.schema import LossTermConfig
from attnkd.models.adapters import AttentionGeometry, resolve_layer
from attnkd.registry import Registry


@dataclass(frozen=True)
class TermSpec:
    """A registered term: its class, a one-line description and the paper it comes from."""

    cls: type[LossTerm]
    summary: str


TERMS: Registry[TermSpec] = Registry("loss term")


class TermError(ValueError):
    """A loss term's settings do not fit the models; ``field`` names the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def register(name: str, summary: str):
    def deco(cls):
        cls.kind = name
        TERMS.register(name)(TermSpec(cls, summary))
        return cls

    return deco


class LossTerm(nn.Module):
    """Base: resolves layers against both geometries, declares taps, returns named values."""

    kind = ""
    teacher_kinds: tuple[str, ...] = ()
    student_kinds: tuple[str, ...] = ()
    alignment = "tokens"
    """What teacher and student must share (:mod:`attnkd.teachers.compat`): 'tokens' (one token
    sequence), 'vocabulary', 'sentence' (nothing: sentence-level targets) or 'images'."""

    def __init__(self, cfg: LossTermConfig, teacher: AttentionGeometry, student: AttentionGeometry):
        super().__init__()
        self.cfg = cfg
        self.weight = float(cfg.weight)
        self.tg, self.sg = teacher, student
        self.t_layer = resolve_layer(cfg.teacher_layer, teacher.num_layers, "teacher_layer")
        self.s_layer = resolve_layer(cfg.student_layer, student.num_layers, "student_layer")

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.t_layer}>{self.s_layer}"

    def taps(self) -> tuple[list[Tap], list[Tap]]:
        return (
            [Tap(k, self.t_layer) for k in self.teacher_kinds],
            [Tap(k, self.s_layer) for k in self.student_kinds],
        )

    def forward(self, t: Taps, s: Taps, mask: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError


def build_terms(
    cfgs: list[LossTermConfig], teacher: AttentionGeometry, student: AttentionGeometry
) -> nn.ModuleList:
    """Instantiate every configured term (raises ValueError/IndexError on bad settings)."""
    return nn.ModuleList(TERMS.get(c.name).cls(c, teacher, student) for c in cfgs)


def bind_terms(terms: nn.ModuleList, student: nn.Module) -> None:
    """Let terms that size modules of their own from the student (``exit_kd``'s exit heads) do
    so; call once the student exists and before the optimizer is built."""
    for term in terms:
        bind = getattr(term, "bind", None)
        if bind is not None:
            bind(student)


def collect_taps(terms: nn.ModuleList) -> tuple[list[Tap], list[Tap]]:
    """Union of the taps every term needs, for the teacher and the student."""
    t_taps: set[Tap] = set()
    s_taps: set[Tap] = set()
    for term in terms:
        t, s = term.taps()
        t_taps.update(t)
        s_taps.update(s)
    return sorted(t_taps, key=lambda x: (x.layer, x.kind)), sorted(
        s_taps, key=lambda x: (x.layer, x.kind)
    )
