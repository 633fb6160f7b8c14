"""Sizing: how much memory a replica needs and the cheapest allowed GPUs it fits (pure)."""

from distillery.sizing.planner import (
    Option,
    Plan,
    PlanError,
    Requirements,
    UnknownModelError,
    plan,
    requirements,
    resolve_model,
)

__all__ = [
    "Option",
    "Plan",
    "PlanError",
    "Requirements",
    "UnknownModelError",
    "plan",
    "requirements",
    "resolve_model",
]
