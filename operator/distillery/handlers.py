"""kopf registrations, and nothing else: each handler delegates to the operator's
:class:`~distillery.kube.runtime.Runtime`, which owns the controllers and the loops.

Level-triggered: every event of a DMD, every event of one of its children, and a slow
resync call the same reconcile, which recomputes the desired state from scratch
and writes only what differs. Children are tracked by in-memory indices fed by kopf's
watches, so a reconcile reads nothing from the API server in the common case, and kopf
fills the indices before any handler runs, so a restarted operator sees its children
before deciding anything.

No finalizers: children carry owner references and are garbage-collected; a DMD can be
deleted while the operator is down. Handlers return None (kopf would store a return
value in status, which the schema prunes).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import kopf

from distillery.api.routing import ROUTE_PLURAL
from distillery.api.types import GROUP, PLURAL, VERSION
from distillery.autoscale.inputs import PodInfo, pod_failure, start_to_ready_seconds
from distillery.kube.runtime import CHILD_RESOURCES, Runtime
from distillery.reconcile.cache import FillPod, fill_pod
from distillery.reconcile.children import (
    OWNER_LABEL,
    REVISION_ANNOTATION,
    TRACK_LABEL,
    ChildState,
    child_state,
)
from distillery.render import (
    LWS_GROUP_KEY_LABEL,
    LWS_WORKER_INDEX_LABEL,
)
from distillery.render.cache import LABEL_CACHE_OF
from distillery.rollout import COMMAND_ANNOTATION
from distillery.settings import Settings

DMD = (GROUP, VERSION, PLURAL)
ROUTE = (GROUP, VERSION, ROUTE_PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": "distillery"}
# The same label as a server-side selector: every child and every pod the indices keep
# carries it (the pods through their templates).
MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED.items())
# Objects per page of the initial listing on start: a restart of an operator with a
# fleet lists every DMD, child and pod, and one answer of them all is a memory peak.
LIST_CHUNK = 500
log = logging.getLogger("distillery")
# How long kopf keeps an object's idle worker (and the last event it held): see startup.
QUEUE_IDLE_SECONDS = 0.5


@kopf.on.startup()
async def startup(**kwargs: Any) -> None:
    settings: kopf.OperatorSettings = kwargs["settings"]
    memo: kopf.Memo = kwargs["memo"]
    # `distillery run` passes its settings in the memo; `kopf run` on this module reads
    # the environment.
    cfg: Settings = getattr(memo, "settings", None) or Settings.from_env()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Watches can stall silently behind proxies: bound them and reconnect.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = 330
    # The API server sends only the operator's own children and pods: filtered here by
    # label instead, kopf would decode (and remember) every Deployment, Service and Pod
    # of the namespaces it watches, cluster-wide a whole company's.
    settings.watching.label_selectors[_child_or_pod] = MANAGED_SELECTOR
    settings.watching.chunk_size = LIST_CHUNK
    settings.networking.request_timeout = 60
    # Our own events carry the meaningful transitions; kopf posts only its warnings.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "distillery.dev/operator"
    settings.execution.max_workers = 8
    # kopf's per-object worker keeps the last event it handled (the object's whole body,
    # managedFields and all) while it waits this long for the next one. In a burst that
    # is every object's body at once, which sets the heap's peak, and the allocator
    # keeps a peak's arenas. Our handlers return at once and read the indices, so a
    # worker that exits sooner costs only its re-creation on the object's next event.
    settings.queueing.idle_timeout = QUEUE_IDLE_SECONDS
    settings.peering.standalone = not cfg.peering
    if cfg.peering:
        settings.peering.name = cfg.peering
        settings.peering.priority = cfg.priority
    memo.runtime = await Runtime.start(cfg)


# (group, version, plural) of every resource whose watch is filtered by MANAGED_SELECTOR.
_CHILDREN_AND_PODS = {
    (r[0], r[1], r[2]) if len(r) == 3 else ("", r[0], r[1])
    for r in (*CHILD_RESOURCES.values(), ("v1", "pods"))
}


def _child_or_pod(resource: Any) -> bool:
    """A kopf resource whose watch the managed-by label filters (kopf's selector)."""
    return (resource.group, resource.version, resource.plural) in _CHILDREN_AND_PODS


# ---- indices ----------------------------------------------------------------------------

INDICES = ("dmd_bodies", "route_bodies", "dmd_pods", "fill_pods", *CHILD_RESOURCES)


def _shared(value: Any) -> Any:
    """A copy of a decoded JSON value whose strings are interned: the DMDs of a fleet
    repeat the same keys, condition reasons and messages, plans and timestamps, and one
    string object serves them all instead of one per DMD."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    return value


def _slim(kwargs: dict[str, Any], annotations: tuple[str, ...] = ()) -> dict[Any, Any]:
    """Only what reconciling reads: managedFields and the rest would cost memory per
    object; and what is kept shares its strings with the other DMDs'."""
    body = kwargs["body"]
    meta = body.get("metadata") or {}
    kept = {
        k: meta[k]
        for k in ("name", "namespace", "uid", "generation", "deletionTimestamp")
        if k in meta
    }
    wanted = {k: v for k, v in (meta.get("annotations") or {}).items() if k in annotations}
    if wanted:
        kept["annotations"] = wanted
    slim = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": kept,
        "spec": _shared(body.get("spec")),
        "status": _shared(body.get("status")),
    }
    return {(kwargs["namespace"], kwargs["name"]): slim}


@kopf.index(*DMD)
def dmd_bodies(**kwargs: Any) -> dict[Any, Any]:
    return _slim(kwargs, (COMMAND_ANNOTATION,))


@kopf.index(*ROUTE)
def route_bodies(**kwargs: Any) -> dict[Any, Any]:
    return _slim(kwargs)


@kopf.index("v1", "pods", labels={OWNER_LABEL: kopf.PRESENT})
def dmd_pods(**kwargs: Any) -> dict[Any, PodInfo]:
    body = kwargs["body"]
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conds.get("PodScheduled") or {}
    unschedulable = (
        str(scheduled.get("message") or "Unschedulable")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else None
    )
    labels = meta.get("labels") or {}
    info = PodInfo(
        name=str(meta.get("name")),
        ready=(conds.get("Ready") or {}).get("status") == "True"
        and not meta.get("deletionTimestamp"),
        unschedulable=unschedulable,
        revision=labels.get(REVISION_ANNOTATION),
        track=labels.get(TRACK_LABEL),
        failure=pod_failure(status),
        terminating=bool(meta.get("deletionTimestamp")),
        group_worker=labels.get(LWS_WORKER_INDEX_LABEL, "0") != "0",
        group=labels.get(LWS_GROUP_KEY_LABEL),
        start_to_ready_seconds=start_to_ready_seconds(status),
    )
    return {(meta.get("namespace"), labels.get(OWNER_LABEL)): info}


# The pods of weight-cache fills: what they said (termination message) or why they
# cannot run. Not replicas, so not in dmd_pods.
@kopf.index("v1", "pods", labels={LABEL_CACHE_OF: kopf.PRESENT})
def fill_pods(**kwargs: Any) -> dict[Any, FillPod]:
    body = kwargs["body"]
    meta = body.get("metadata") or {}
    return {(meta.get("namespace"), (meta.get("labels") or {}).get(LABEL_CACHE_OF)): fill_pod(body)}


def _child(**kwargs: Any) -> dict[Any, ChildState]:
    state = child_state(kwargs["body"])
    return {(state.namespace, state.owner): state} if state.owner else {}


for _index, _resource in CHILD_RESOURCES.items():
    kopf.index(*_resource, labels=MANAGED, id=_index)(_child)


# ---- handlers ---------------------------------------------------------------------------


def _remember_indices(kwargs: dict[str, Any]) -> Runtime:
    runtime: Runtime = kwargs["memo"].runtime
    if runtime.indices is None:
        # kopf hands the same live Index objects to every handler: keep them for the
        # operator-level loops.
        runtime.indices = {n: kwargs[n] for n in INDICES}
    return runtime


@kopf.on.event(*DMD)
async def dmd_event(**kwargs: Any) -> None:
    runtime = _remember_indices(kwargs)
    body = kwargs["body"]
    if kwargs["event"].get("type") == "DELETED":
        runtime.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        await runtime.tier_changed(body["metadata"]["namespace"], body["metadata"]["name"])
        return
    runtime.dmd_changed(body)


@kopf.on.event(*ROUTE)
async def route_event(**kwargs: Any) -> None:
    runtime = _remember_indices(kwargs)
    body = kwargs["body"]
    meta = body["metadata"]
    if kwargs["event"].get("type") == "DELETED":
        runtime.forget_route(meta["namespace"], meta["name"])
        return
    # The index may not hold this event's body yet: reconcile the latest there is.
    latest = list(kwargs["route_bodies"].get((meta["namespace"], meta["name"]), [])) or [body]
    await runtime.reconcile_route(latest[0], runtime.indices or {})


async def _on_child(**kwargs: Any) -> None:
    """A child changed: reconcile its owner (from the index, no API read)."""
    runtime = _remember_indices(kwargs)
    meta = kwargs["body"].get("metadata") or {}
    labels = meta.get("labels") or {}
    owner = labels.get(OWNER_LABEL) or labels.get(LABEL_CACHE_OF)
    if not owner:
        return
    if kwargs["dmd_bodies"].get((meta.get("namespace"), owner)):
        runtime.submit((str(meta.get("namespace")), str(owner)))


for _index, _resource in CHILD_RESOURCES.items():
    kopf.on.event(*_resource, labels=MANAGED, id=f"{_index}_event")(_on_child)
# Pods matter only for why replicas are missing (Unschedulable): the owner is reconciled
# and its status written only if that changes.
kopf.on.event("v1", "pods", labels={OWNER_LABEL: kopf.PRESENT}, id="pod_event")(_on_child)
kopf.on.event("v1", "pods", labels={LABEL_CACHE_OF: kopf.PRESENT}, id="fill_pod_event")(_on_child)


@kopf.on.cleanup()
async def cleanup(**kwargs: Any) -> None:
    runtime: Runtime | None = getattr(kwargs["memo"], "runtime", None)
    if runtime is not None:
        await runtime.stop()


@kopf.on.probe(id="reconciler")
def probe(**kwargs: Any) -> str:
    return "ok" if getattr(kwargs["memo"], "runtime", None) is not None else "starting"
