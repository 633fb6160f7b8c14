"""Parse and plan each DMD once per generation, for the reconciler and the autoscaler.

Both loops need the parsed spec and the placement: the reconciler to render, the
autoscaler to know a replica's capacity and cold start. Planning searches every GPU
type, size and quantization, so it is done once per (DMD, generation, node catalog) and
shared. An entry holds what a plan depends on: the spec (through the uid and generation;
the API server bumps the generation on every spec change) and the catalog (node GPU
counts can change it). One entry per DMD: memory stays bounded by the number of DMDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from distillery.api.types import DistilledModelDeployment
from distillery.catalog import Catalog
from distillery.reconcile import parse
from distillery.sizing import Plan, PlanError, UnknownModelError, plan

Resolved = tuple[DistilledModelDeployment, Plan]


@dataclass(frozen=True)
class _Entry:
    uid: Any
    generation: Any
    catalog: Catalog  # held, and compared by identity: a new node catalog is a new plan
    resolved: Resolved | None


class PlanCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self.plans_made = 0

    def resolve(self, body: Mapping[str, Any], catalog: Catalog) -> Resolved | None:
        """The DMD and its plan, or None when the spec is invalid or fits nowhere (the
        reconciler says why, from its own attempt)."""
        meta = body.get("metadata") or {}
        name = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        uid, generation = meta.get("uid"), meta.get("generation")
        found = self._entries.get(name)
        if (
            found is not None
            and generation is not None
            and (found.uid, found.generation) == (uid, generation)
            and found.catalog is catalog
        ):
            return found.resolved
        try:
            dmd = parse(body)
            # The operator reads only the chosen option; the alternatives (every GPU type,
            # size and quantization tried, with why it lost) are for `distillery plan`, and
            # would cost a few KiB per DMD held for the DMD's lifetime.
            chosen = replace(plan(dmd.spec, catalog), alternatives=[])
            resolved: Resolved | None = (dmd, chosen)
        except (ValidationError, PlanError, UnknownModelError):
            resolved = None
        self.plans_made += 1
        self._entries[name] = _Entry(uid, generation, catalog, resolved)
        return resolved

    def forget(self, namespace: str, name: str) -> None:
        self._entries.pop((namespace, name), None)
