"""Standard conditions (metav1.Condition) with kstatus semantics.

``Ready`` is the summary `kubectl wait --for=condition=Ready` and Argo CD/Flux read;
``Reconciling`` and ``Stalled`` are kstatus' abnormal-true conditions (work in
progress, and an error that will not heal without a change to the spec). A condition's
``lastTransitionTime`` moves only when its status flips, so recomputing the same state
yields the same object and no write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from distillery.api.types import Condition, ConditionStatus

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


@dataclass(frozen=True)
class ConditionState:
    """A condition as a controller computes it: everything but when its status last
    flipped, which only :func:`merge_conditions` can tell."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    observed_generation: int | None


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None
) -> ConditionState:
    return ConditionState(
        type=type_,
        status="Unknown" if status is None else ("True" if status else "False"),
        reason=reason,
        message=message,
        observed_generation=generation,
    )


def parse_conditions(wire: Iterable[Mapping[str, Any]]) -> list[Condition]:
    """Recorded conditions as models; one in another shape (written by hand or by an
    older release) is dropped, never fatal to the reconcile."""
    out = []
    for c in wire:
        try:
            out.append(Condition.model_validate(c))
        except ValidationError:
            continue
    return out


def merge_conditions(
    existing: Iterable[Condition], desired: Iterable[ConditionState], now: str
) -> list[Condition]:
    """Desired conditions with lastTransitionTime carried over where status is unchanged;
    existing conditions of types not in ``desired`` are kept as they are (another
    controller, such as the autoscaler, owns them)."""
    old = {c.type: c for c in existing}
    out: dict[str, Condition] = dict(old)
    for new in desired:
        prev = old.get(new.type)
        flipped = prev is None or prev.status != new.status
        out[new.type] = Condition(
            type=new.type,
            status=new.status,
            reason=new.reason,
            message=new.message,
            observed_generation=new.observed_generation,
            last_transition_time=now if flipped or prev is None else prev.last_transition_time,
        )
    rank = {t: i for i, t in enumerate(ORDER)}
    return sorted(out.values(), key=lambda c: (rank.get(c.type, len(ORDER)), c.type))
