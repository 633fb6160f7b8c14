"""Carry out a ReasoningRoute's desired state against the API server.

The decision is :func:`distillery.reconcile.route.route_desired`; this controller feeds
it the route and its tiers' DMDs from the operator's indices (no API read), applies the
children whose content changed since it last applied them (server-side apply, the
operator's one field manager), deletes the children of tiers the route no longer has,
patches status only when it changed, and posts the spill transitions as events.

Whether the Gateway API and its Inference Extension are served is asked at most once a
minute, so installing the extension's CRDs turns a route's Service fallback into
InferencePools without restarting the operator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from distillery.api.conditions import merge_conditions, parse_conditions, rfc3339
from distillery.api.errors import validation_problems
from distillery.api.hashing import content_hash
from distillery.api.merge_patch import merge_patch
from distillery.api.routing import ReasoningRoute
from distillery.api.types import object_key
from distillery.kube.client import ClusterClient, in_thread
from distillery.reconcile.route import RouteDesired, Spill, route_desired
from distillery.render.routing import RouteRenderOptions

log = logging.getLogger("distillery.routes")
Key = tuple[str, str]
# Seconds between asks of the API server whether the extension's CRDs are served.
API_RECHECK_SECONDS = 60.0
OWNED = ("observedGeneration", "backend", "tiers", "costPerHour", "summary", "conditions")


@dataclass
class ServedApis:
    """Whether the Gateway API and the Inference Extension are served, re-asked at most
    every ``ttl_seconds``."""

    gateway_api: Callable[[], bool]
    inference_extension: Callable[[], bool]
    ttl_seconds: float = API_RECHECK_SECONDS
    _known: tuple[bool, bool] | None = None
    _asked_at: float = 0.0

    async def current(self) -> tuple[bool, bool]:
        if self._known is None or time.monotonic() - self._asked_at > self.ttl_seconds:
            self._known = (
                await in_thread(self.gateway_api),
                await in_thread(self.inference_extension),
            )
            self._asked_at = time.monotonic()
        return self._known


@dataclass
class RouteReconciler:
    kube: ClusterClient
    apis: ServedApis
    # The settings' options; which APIs are served and the owner are set per reconcile.
    options: RouteRenderOptions
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # (namespace, route) -> {(kind, name): content hash} of what was last applied.
    _applied: dict[Key, dict[tuple[str, str], str]] = field(default_factory=dict)
    _spills: dict[Key, dict[str, Spill]] = field(default_factory=dict)
    _status: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._locks.pop(key, None)
        self._applied.pop(key, None)
        self._spills.pop(key, None)
        self._status.pop(key, None)

    async def reconcile(
        self, body: Mapping[str, Any], dmds: Mapping[str, Mapping[str, Any]]
    ) -> RouteDesired | None:
        """Reconcile one route; ``dmds`` are the DMD bodies of its namespace by name."""
        key = object_key(body)
        async with self._locks.setdefault(key, asyncio.Lock()):
            return await self._reconcile(key, body, dmds)

    async def _reconcile(
        self, key: Key, body: Mapping[str, Any], dmds: Mapping[str, Mapping[str, Any]]
    ) -> RouteDesired | None:
        namespace, name = key
        now = rfc3339(time.time())
        live = dict(body.get("status") or {})
        try:
            route = ReasoningRoute.model_validate({k: v for k, v in body.items() if k != "status"})
        except ValidationError as exc:
            # The CRD's schema refuses what the models refuse; this is an older object.
            problems = "; ".join(validation_problems(exc))
            log.warning("route %s/%s is invalid: %s", namespace, name, problems)
            return None
        gateway_api, extension = await self.apis.current()
        uid = (body.get("metadata") or {}).get("uid")
        options = replace(
            self.options,
            inference_extension=extension,
            gateway_api=gateway_api,
            owner_uid=str(uid) if uid else None,
        )
        desired = route_desired(
            route,
            dmds,
            options=options,
            previous_spills=self._spills.get(key),
            now=time.time(),
        )
        await self._apply(key, desired)
        self._spills[key] = desired.spills
        status = dict(desired.status)
        status["conditions"] = [
            c.to_wire()
            for c in merge_conditions(
                parse_conditions(live.get("conditions") or []), desired.conditions, now
            )
        ]
        effective = {**live, **self._status.get(key, {})}
        patch = merge_patch({k: effective.get(k) for k in OWNED if k in effective}, status)
        if patch:
            await in_thread(self.kube.patch_route_status, namespace, name, patch)
            self._status[key] = status
        for event in desired.events:
            try:
                await in_thread(
                    self.kube.post_event, body, event.type, event.reason, event.message, now
                )
            except Exception as exc:  # noqa: BLE001 - an event is never worth a failure
                log.warning("could not post event %s: %s", event.reason, exc)
        return desired

    async def _apply(self, key: Key, desired: RouteDesired) -> None:
        namespace, name = key
        if key in self._applied:
            before = self._applied[key]
        else:
            # First sight in this process (a start, a restart, a new leader): what the
            # cluster holds, so a tier removed while no operator ran is pruned too.
            listed = await in_thread(self.kube.list_route_children, namespace, name)
            before = dict.fromkeys(listed, "")
        now: dict[tuple[str, str], str] = {}
        for obj in desired.objects:
            ident = (str(obj["kind"]), str(obj["metadata"]["name"]))
            digest = content_hash(obj)
            now[ident] = digest
            if before.get(ident) == digest:
                continue
            log.info("applying %s %s/%s for route %s", ident[0], namespace, ident[1], name)
            await in_thread(self.kube.apply, obj)
            self._applied.setdefault(key, {})[ident] = digest
        for kind, child in sorted(set(before) - set(now)):
            log.info("deleting %s %s/%s: route %s no longer has it", kind, namespace, child, name)
            await in_thread(self.kube.delete_child, namespace, child, kind)
        self._applied[key] = now
