"""One way to build a ReasoningRoute in a unit test."""

from __future__ import annotations

from typing import Any

from distillery.api.routing import ReasoningRoute


def route(**spec: Any) -> ReasoningRoute:
    base: dict[str, Any] = {
        "model": "deepseek-r1",
        "tiers": [
            {"name": "routine", "deployment": "r1-7b"},
            {"name": "hard", "deployment": "r1-32b", "priority": 10},
        ],
        "defaultTier": "routine",
        "rules": [{"tier": "hard", "header": {"name": "x-reasoning-effort", "values": ["high"]}}],
        "gateway": {"parentRefs": [{"name": "gw"}]},
    }
    base.update(spec)
    return ReasoningRoute.model_validate(
        {"metadata": {"name": "r1", "namespace": "team"}, "spec": base}
    )
