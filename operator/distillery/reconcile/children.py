"""What the reconciler needs to know about a live child object (pure).

Children carry the hash of the content distillery applied (annotation
``distillery.dev/applied-hash``): equal hash means nothing to write. A second check
catches another writer: when a field manager other than distillery owns a field that
distillery also set (say, someone ran ``kubectl edit`` on the Deployment's args), the
child is re-applied with force, which takes the field back and leaves fields distillery
never set alone.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class ChildState:
    """One live child, reduced to what reconciling and status need."""

    kind: str
    name: str
    namespace: str
    owner: str
    applied_hash: str | None
    conflicts: tuple[str, ...] = ()
    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    spec_replicas: int | None = None
    conditions: tuple[tuple[str, str, str, str], ...] = field(default=())

    def condition(self, type_: str) -> tuple[str, str, str] | None:
        for t, status, reason, message in self.conditions:
            if t == type_:
                return status, reason, message
        return None


def child_state(body: Mapping[str, Any]) -> ChildState:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return ChildState(
        kind=str(body.get("kind", "")),
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        owner=str((meta.get("labels") or {}).get(OWNER_LABEL, "")),
        applied_hash=(meta.get("annotations") or {}).get(APPLIED_HASH),
        conflicts=tuple(foreign_conflicts(meta.get("managedFields"))),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
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
