"""What the reconciler needs to know about a live child object (pure).

Children carry the hash of the content distillery applied (annotation
``distillery.dev/applied-hash``): equal hash means nothing to write. A second check
catches another writer: when a field manager other than distillery owns a field that
distillery also set (say, someone ran ``kubectl edit`` on the Deployment's args), the
child is re-applied with force, which takes the field back and leaves fields distillery
never set alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FIELD_MANAGER = "distillery"
APPLIED_HASH = "distillery.dev/applied-hash"
OWNER_LABEL = "distillery.dev/deployment"
# Managers that legitimately write into children: the Deployment controller (status,
# revision annotation) and the ReplicaSet machinery; they never own fields we set.
SYSTEM_MANAGERS = frozenset({"kube-controller-manager"})


def _paths(fields: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Leaf paths of a managedFields fieldsV1 tree."""
    out: set[tuple[str, ...]] = set()
    for key, sub in fields.items():
        if key == ".":
            continue
        path = (*prefix, key)
        if isinstance(sub, Mapping) and any(k != "." for k in sub):
            out |= _paths(sub, path)
        else:
            out.add(path)
    return out


def foreign_conflicts(managed_fields: list[Mapping[str, Any]] | None) -> list[str]:
    """Field managers (other than distillery and the system) owning a field distillery
    also owns. Such an edit is reverted by the next apply."""
    entries = managed_fields or []
    ours: set[tuple[str, ...]] = set()
    for e in entries:
        if e.get("manager") == FIELD_MANAGER and e.get("operation") == "Apply":
            ours |= _paths(e.get("fieldsV1") or {})
    if not ours:
        return []
    others: list[str] = []
    for e in entries:
        manager = str(e.get("manager", ""))
        if manager == FIELD_MANAGER or manager in SYSTEM_MANAGERS:
            continue
        if e.get("subresource") == "status":
            continue
        theirs = _paths(e.get("fieldsV1") or {})
        # A field they own that lies inside or on one of ours.
        if any(p[: len(o)] == o or o[: len(p)] == p for p in theirs for o in ours):
            others.append(manager)
    return sorted(set(others))


def foreign_fields(
    managed_fields: list[Mapping[str, Any]] | None,
) -> tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]:
    """Every field path owned by a manager other than distillery and the system.

    An Update by another writer takes ownership of the fields it changed away from
    distillery, so what distillery *owns* cannot tell an edit apart; what it *wants*
    can: :func:`edited_by` checks these paths against the desired object."""
    out = []
    for e in managed_fields or []:
        manager = str(e.get("manager", ""))
        if manager == FIELD_MANAGER or manager in SYSTEM_MANAGERS:
            continue
        if e.get("subresource") == "status":
            continue
        out.append((manager, tuple(sorted(_paths(e.get("fieldsV1") or {})))))
    return tuple(out)


def _exists(obj: Any, path: tuple[str, ...]) -> bool:
    node = obj
    for part in path:
        if part.startswith("f:"):
            if not isinstance(node, Mapping) or part[2:] not in node:
                return False
            node = node[part[2:]]
        elif part.startswith("k:"):
            if not isinstance(node, list):
                return False
            try:
                key = json.loads(part[2:])
            except ValueError:
                return False
            match = [
                i
                for i in node
                if isinstance(i, Mapping) and all(i.get(k) == v for k, v in key.items())
            ]
            if not match:
                return False
            node = match[0]
        else:  # v: (set values), i: (indices): the list itself is ours
            return isinstance(node, list)
    return True


def edited_by(
    foreign: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...], desired: Mapping[str, Any]
) -> list[str]:
    """Managers that own a field distillery sets in ``desired``: their edit is reverted."""
    return sorted({m for m, paths in foreign if any(_exists(desired, p) for p in paths)})


@dataclass(frozen=True)
class ChildState:
    """One live child, reduced to what reconciling and status need."""

    kind: str
    name: str
    namespace: str
    owner: str
    applied_hash: str | None
    conflicts: tuple[str, ...] = ()
    foreign: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = ()
    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    spec_replicas: int | None = None
    conditions: tuple[tuple[str, str, str, str], ...] = field(default=())
    revision: str | None = None  # Deployments: the pod template revision last applied
    one_at_a_time: bool = False  # Deployments: strategy replaces without a surge

    @property
    def key(self) -> str:
        """How the reconciler names this child (see :func:`child_key`)."""
        return child_key(self.kind, self.name, self.owner)

    def condition(self, type_: str) -> tuple[str, str, str] | None:
        for t, status, reason, message in self.conditions:
            if t == type_:
                return status, reason, message
        return None


CANARY = "canary"
REVISION_ANNOTATION = "distillery.dev/revision"
TRACK_LABEL = "distillery.dev/track"


def child_key(kind: str, name: str, owner: str) -> str:
    """A DMD's children by kind, and by name suffix where a kind has several:
    ``Deployment`` (``<dmd>``), ``Deployment/canary`` (``<dmd>-canary``),
    ``Service/stable`` (``<dmd>-stable``)."""
    if name == owner:
        return kind
    suffix = name[len(owner) + 1 :] if name.startswith(owner + "-") else name
    return f"{kind}/{suffix}"


# The status fields ChildState's replicas, ready, updated and available come from.
WORKLOAD_COUNTS = ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas")
DAEMONSET_COUNTS = (
    "desiredNumberScheduled",
    "numberReady",
    "updatedNumberScheduled",
    "numberAvailable",
)


def child_state(body: Mapping[str, Any]) -> ChildState:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or (
        (spec.get("rolloutStrategy") or {}).get("rollingUpdateConfiguration") or {}
    )
    generation = int(meta.get("generation") or 0)
    # A DaemonSet counts its pods per node: desired, ready, updated, available.
    counts = DAEMONSET_COUNTS if body.get("kind") == "DaemonSet" else WORKLOAD_COUNTS
    # A LeaderWorkerSet's status has no observedGeneration: its counts are all there is.
    observed = (
        generation
        if body.get("kind") == "LeaderWorkerSet"
        else int(status.get("observedGeneration") or 0)
    )
    return ChildState(
        revision=(meta.get("annotations") or {}).get(REVISION_ANNOTATION),
        one_at_a_time=rolling.get("maxSurge") in (0, "0", "0%"),
        kind=str(body.get("kind", "")),
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        owner=str((meta.get("labels") or {}).get(OWNER_LABEL, "")),
        applied_hash=(meta.get("annotations") or {}).get(APPLIED_HASH),
        conflicts=tuple(foreign_conflicts(meta.get("managedFields"))),
        foreign=foreign_fields(meta.get("managedFields")),
        generation=generation,
        observed_generation=observed,
        replicas=int(status.get(counts[0]) or 0),
        ready_replicas=int(status.get(counts[1]) or 0),
        updated_replicas=int(status.get(counts[2]) or 0),
        available_replicas=int(status.get(counts[3]) or 0),
        spec_replicas=spec.get("replicas") if isinstance(spec.get("replicas"), int) else None,
        conditions=tuple(
            (
                str(c.get("type", "")),
                str(c.get("status", "")),
                str(c.get("reason", "")),
                str(c.get("message", "")),
            )
            for c in status.get("conditions") or []
        ),
    )
