"""Rollouts: how a new revision replaces the running one (pure).

The strategies and their steps are in :mod:`.strategy`; canary analysis verdicts in
:mod:`.analysis`.
"""

from distillery.rollout.analysis import Criteria, Measurement
from distillery.rollout.strategy import (
    COMMAND_ANNOTATION,
    COMMANDS,
    RolloutDecision,
    RolloutInput,
    TrackState,
    canary_split,
    decide,
    route_weights,
)

__all__ = [
    "COMMANDS",
    "COMMAND_ANNOTATION",
    "Criteria",
    "Measurement",
    "RolloutDecision",
    "RolloutInput",
    "TrackState",
    "canary_split",
    "decide",
    "route_weights",
]
