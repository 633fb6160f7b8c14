"""What the operator watches, and what its indices keep of each object.

Every index maps (namespace, DMD name) to values: the DMDs' bodies and the
ReasoningRoutes' (slim: what reconciling reads), the states of a DMD's children by kind,
the :class:`PodInfo` of its replicas' pods and the reports of its weight-cache fill
pods. Children and pods are asked of the API server by the managed-by label every one
of them carries (rendered in their templates): without it, the operator would decode
every Deployment, Service and Pod of the namespaces it watches, cluster-wide a whole
company's.

The index functions run in the watch threads on the decoded object, which is let go
right after: they must be pure and keep nothing of the body but what they return.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from distillery.api.routing import ROUTE_KIND, ROUTE_PLURAL
from distillery.api.types import GROUP, KIND, PLURAL, VERSION
from distillery.autoscale.inputs import PodInfo, pod_failure, start_to_ready_seconds
from distillery.kube.informer import Key, Watch
from distillery.reconcile.cache import fill_pod
from distillery.reconcile.children import OWNER_LABEL, REVISION_ANNOTATION, TRACK_LABEL, child_state
from distillery.render import (
    LWS_GROUP,
    LWS_GROUP_KEY_LABEL,
    LWS_PLURAL,
    LWS_VERSION,
    LWS_WORKER_INDEX_LABEL,
)
from distillery.render.cache import LABEL_CACHE_OF
from distillery.rollout import COMMAND_ANNOTATION

MANAGED = {"app.kubernetes.io/managed-by": "distillery"}
# The same label as a server-side selector.
MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED.items())

# Every kind of child a DMD has, by the name of its index of their states by owner: the
# resource watched (group, version, plural, kind). The LeaderWorkerSet and Gateway APIs
# are served only where they are installed; a resource not served is an empty index.
CHILD_RESOURCES: dict[str, tuple[str, str, str, str]] = {
    "child_deployments": ("apps", "v1", "deployments", "Deployment"),
    "child_groups": (LWS_GROUP, LWS_VERSION, LWS_PLURAL, "LeaderWorkerSet"),
    "child_services": ("", "v1", "services", "Service"),
    "child_pdbs": ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    "child_routes": ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    "child_claims": ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    "child_jobs": ("batch", "v1", "jobs", "Job"),
    # The pre-pull DaemonSets of NodeLocal weight caches.
    "child_daemonsets": ("apps", "v1", "daemonsets", "DaemonSet"),
}
CHILD_INDICES = tuple(CHILD_RESOURCES)


def shared(value: Any) -> Any:
    """A copy of a decoded JSON value whose strings are interned: the DMDs of a fleet
    repeat the same keys, condition reasons and messages, plans and timestamps, and one
    string object serves them all instead of one per DMD."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k): shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shared(v) for v in value]
    return value


def slim(body: Mapping[str, Any], annotations: tuple[str, ...] = ()) -> dict[str, Any]:
    """Only what reconciling reads of a DMD or route: managedFields and the rest would
    cost memory per object; and what is kept shares its strings with the others'."""
    meta = body.get("metadata") or {}
    kept = {
        k: meta[k]
        for k in ("name", "namespace", "uid", "generation", "deletionTimestamp")
        if k in meta
    }
    wanted = {k: v for k, v in (meta.get("annotations") or {}).items() if k in annotations}
    if wanted:
        kept["annotations"] = wanted
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": kept,
        "spec": shared(body.get("spec")),
        "status": shared(body.get("status")),
    }


def _own_key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace")), str(meta.get("name")))


def dmd_entry(body: Mapping[str, Any]) -> tuple[Key, Any]:
    return _own_key(body), slim(body, (COMMAND_ANNOTATION,))


def route_entry(body: Mapping[str, Any]) -> tuple[Key, Any]:
    return _own_key(body), slim(body)


def pod_info(body: Mapping[str, Any]) -> tuple[Key, PodInfo] | None:
    """A replica's pod: ready, why it cannot be scheduled, how it failed, its revision
    and track, and how long it took to become ready."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    labels = meta.get("labels") or {}
    if not labels.get(OWNER_LABEL):
        return None
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conds.get("PodScheduled") or {}
    unschedulable = (
        str(scheduled.get("message") or "Unschedulable")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else None
    )
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
    return (str(meta.get("namespace")), str(labels[OWNER_LABEL])), info


def fill_pod_entry(body: Mapping[str, Any]) -> tuple[Key, Any] | None:
    """A weight-cache fill Job's pod: what it said (termination message) or why it
    cannot run. Not a replica, so not in the pods' index."""
    meta = body.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(LABEL_CACHE_OF)
    if not owner:
        return None
    return (str(meta.get("namespace")), str(owner)), fill_pod(body)


def child_entry(body: Mapping[str, Any]) -> tuple[Key, Any] | None:
    state = child_state(body)
    return ((state.namespace, state.owner), state) if state.owner else None


def watches() -> list[Watch]:
    """Every resource the operator watches."""
    return [
        Watch(
            name="dmds",
            group=GROUP,
            version=VERSION,
            plural=PLURAL,
            kind=KIND,
            selector="",
            indexers={"dmd_bodies": dmd_entry},
        ),
        Watch(
            name="routes",
            group=GROUP,
            version=VERSION,
            plural=ROUTE_PLURAL,
            kind=ROUTE_KIND,
            selector="",
            indexers={"route_bodies": route_entry},
        ),
        *(
            Watch(
                name=plural,
                group=group,
                version=version,
                plural=plural,
                kind=kind,
                selector=MANAGED_SELECTOR,
                indexers={index: child_entry},
            )
            for index, (group, version, plural, kind) in CHILD_RESOURCES.items()
        ),
        Watch(
            name="pods",
            group="",
            version="v1",
            plural="pods",
            kind="Pod",
            selector=MANAGED_SELECTOR,
            indexers={"dmd_pods": pod_info, "fill_pods": fill_pod_entry},
        ),
    ]
