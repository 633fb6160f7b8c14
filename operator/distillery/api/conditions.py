"""Standard conditions (metav1.Condition) with kstatus semantics.

``Ready`` is the summary `kubectl wait --for=condition=Ready` and Argo CD/Flux read;
``Reconciling`` and ``Stalled`` are kstatus' abnormal-true conditions (work in
progress, and an error that will not heal without a change to the spec). A condition's
``lastTransitionTime`` moves only when its status flips, so recomputing the same state
yields the same object and no write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
SIZED = "Sized"
METRICS_AVAILABLE = "MetricsAvailable"
SCALING_LIMITED = "ScalingLimited"
ROLLOUT_PROGRESSING = "RolloutProgressing"
SLO_MEASURABLE = "SLOMeasurable"

# Order in status: the summary first, then kstatus, then domain conditions.
ORDER = (
    READY,
    RECONCILING,
    STALLED,
    SIZED,
    METRICS_AVAILABLE,
    SCALING_LIMITED,
    SLO_MEASURABLE,
    ROLLOUT_PROGRESSING,
)


def rfc3339(epoch: float) -> str:
    """Seconds since the epoch as the API's time format (UTC, whole seconds, ``Z``)."""
    return (
        datetime.fromtimestamp(epoch, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    )


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": type_,
        "status": "Unknown" if status is None else ("True" if status else "False"),
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def merge_conditions(
    existing: Iterable[Mapping[str, Any]], desired: Iterable[Mapping[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Desired conditions with lastTransitionTime carried over where status is unchanged;
    existing conditions of types not in ``desired`` are kept as they are (another
    controller, such as the autoscaler, owns them)."""
    old = {c["type"]: c for c in existing}
    out: dict[str, dict[str, Any]] = {t: dict(c) for t, c in old.items()}
    for cond in desired:
        new = dict(cond)
        prev = old.get(new["type"])
        if prev is not None and prev.get("status") == new["status"]:
            new["lastTransitionTime"] = prev.get("lastTransitionTime", now)
        else:
            new["lastTransitionTime"] = now
        out[new["type"]] = new
    rank = {t: i for i, t in enumerate(ORDER)}
    return sorted(out.values(), key=lambda c: (rank.get(c["type"], len(ORDER)), c["type"]))


def get(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
