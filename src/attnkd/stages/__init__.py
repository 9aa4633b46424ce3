"""Staged runs (issue 9): a run is a list of stages, each with its own teacher, data, losses,
schedule and frozen parts; teacher-assistant chains; the stage-kind registry.

The config side (how a stage's overrides merge over the recipe) is
:mod:`attnkd.config.stages`; this package runs the stages (:func:`run_stages`, or
:func:`run_recipe` for any recipe) and holds the kinds a stage can be (:func:`register_kind`).
"""

from attnkd.config.stages import Stage, is_staged, stage_plan
from attnkd.stages.kinds import KINDS, StageKind, get_kind, register_kind
from attnkd.stages.run import MANIFEST, check_kinds, run_recipe, run_stages

__all__ = [
    "KINDS",
    "MANIFEST",
    "Stage",
    "StageKind",
    "check_kinds",
    "get_kind",
    "is_staged",
    "register_kind",
    "run_recipe",
    "run_stages",
    "stage_plan",
]
