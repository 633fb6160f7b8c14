"""Parse and plan each DMD once per generation, for the reconciler and the autoscaler.

Both loops need the parsed spec and the placement: the reconciler to render, the
autoscaler to know a replica's capacity and cold start. Planning searches every GPU
type, size and quantization, so it is done once per (DMD, generation, node catalog) and
shared. An entry holds what a plan depends on: the spec (through the uid and generation;
the API server bumps the generation on every spec change) and the catalog (node GPU
counts can change it). One entry per DMD: memory stays bounded by the number of DMDs.

DMDs with the same spec share one parsed spec and one plan: a fleet repeats a few
models and shapes many times (a parsed spec and its plan are ~9 KiB, and a plan is a
search), so an entry per DMD holds only its own metadata beside the shared pair. The
pair lives as long as a DMD uses it.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from distillery.api.hashing import content_hash
from distillery.api.types import DistilledModelDeployment
from distillery.catalog import Catalog
from distillery.reconcile import parse, parsed_metadata
from distillery.sizing import Plan, PlanError, UnknownModelError, plan

Resolved = tuple[DistilledModelDeployment, Plan]


class _SharedPlan:
    """One spec's parse and plan against one catalog, shared by the DMDs that have it."""

    __slots__ = ("__weakref__", "catalog", "resolved")

    def __init__(self, catalog: Catalog, resolved: Resolved | None) -> None:
        self.catalog = catalog  # compared by identity: a new node catalog is a new plan
        self.resolved = resolved  # the first DMD's; others take its spec and plan


@dataclass(frozen=True)
class _Entry:
    uid: Any
    generation: Any
    shared: _SharedPlan  # held: it lives while a DMD uses it
    resolved: Resolved | None


class PlanCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._by_spec: weakref.WeakValueDictionary[str, _SharedPlan] = weakref.WeakValueDictionary()
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
            and found.shared.catalog is catalog
        ):
            return found.resolved
        spec_key = content_hash(body.get("spec") or {}, length=32)
        shared = self._by_spec.get(spec_key)
        if shared is None or shared.catalog is not catalog:
            shared = _SharedPlan(catalog, self._parse_and_plan(body, catalog))
            self._by_spec[spec_key] = shared
            resolved = shared.resolved
        elif shared.resolved is None:
            resolved = None
        else:
            first, chosen = shared.resolved
            # This DMD's own metadata beside the shared spec (a shallow copy shares it).
            dmd = first.model_copy(update={"metadata": parsed_metadata(meta)})
            resolved = (dmd, chosen)
        self._entries[name] = _Entry(uid, generation, shared, resolved)
        return resolved

    def _parse_and_plan(self, body: Mapping[str, Any], catalog: Catalog) -> Resolved | None:
        self.plans_made += 1
        try:
            dmd = parse(body)
            # The operator reads only the chosen option; the alternatives (every GPU type,
            # size and quantization tried, with why it lost) are for `distillery plan`, and
            # would cost a few KiB per DMD held for the DMD's lifetime.
            return dmd, replace(plan(dmd.spec, catalog), alternatives=[])
        except (ValidationError, PlanError, UnknownModelError):
            return None

    def forget(self, namespace: str, name: str) -> None:
        self._entries.pop((namespace, name), None)
