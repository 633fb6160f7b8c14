"""The Kubernetes edge: server-side apply of children, status patches, reads, events.

Everything here talks to the API server through :mod:`.rest`'s synchronous client, so
every call runs in a worker thread (``asyncio.to_thread``), never on the event loop.
Writes go through one field manager, ``distillery``; the autoscaler writes
``spec.replicas`` through ``/scale`` as ``distillery-autoscaler``. Every write is counted
here, in ``distillery_api_writes_total``, so a steady state can be shown to cost none.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

import urllib3

from distillery import metrics
from distillery.api.routing import ROUTE_PLURAL
from distillery.api.types import GROUP, PLURAL, VERSION
from distillery.catalog import Catalog
from distillery.kube.rest import (
    ApiError,
    CredentialsError,
    Rest,
    login,
    resource_path,
)
from distillery.reconcile.children import FIELD_MANAGER
from distillery.render import LWS_GROUP, LWS_PLURAL, LWS_VERSION
from distillery.render.routing import (
    LABEL_ROUTE,
    OBJECTIVE_GROUP,
    OBJECTIVE_VERSION,
    POOL_GROUP,
    POOL_VERSION,
)

log = logging.getLogger(__name__)

AUTOSCALER_FIELD_MANAGER = "distillery-autoscaler"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
# The Gateway API Inference Extension's kinds a ReasoningRoute renders.
ROUTE_CUSTOM_KINDS = {
    "InferencePool": (POOL_GROUP, POOL_VERSION, "inferencepools"),
    "InferenceObjective": (OBJECTIVE_GROUP, OBJECTIVE_VERSION, "inferenceobjectives"),
}
# Every custom resource a route (or a DMD's spec.gateway) renders, by kind: how each is
# applied, deleted and listed.
CUSTOM_CHILD_KINDS = {
    **ROUTE_CUSTOM_KINDS,
    "HTTPRoute": ("gateway.networking.k8s.io", "v1", "httproutes"),
}
# Every kind the operator writes: (group, version, plural), group "" for the core API.
KINDS: dict[str, tuple[str, str, str]] = {
    "Deployment": ("apps", "v1", "deployments"),
    "DaemonSet": ("apps", "v1", "daemonsets"),
    "Service": ("", "v1", "services"),
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "Job": ("batch", "v1", "jobs"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "LeaderWorkerSet": (LWS_GROUP, LWS_VERSION, LWS_PLURAL),
    "PodMonitor": ("monitoring.coreos.com", "v1", "podmonitors"),
    **CUSTOM_CHILD_KINDS,
}
# Built-in kinds a route renders (always served; its custom kinds may not be).
_ROUTE_BUILTIN_KINDS = ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding")


def kind_path(kind: str, namespace: str, name: str | None = None, verb: str = "write") -> str:
    """The path of a kind the operator writes; any other kind is a programming error,
    named."""
    found = KINDS.get(kind)
    if found is None:
        raise ValueError(f"distillery does not {verb} {kind}")
    return resource_path(*found, namespace, name)


def _dmd_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return resource_path(GROUP, VERSION, PLURAL, namespace, name, subresource)


def count_write(verb: str, kind: str) -> None:
    """Count one write to the API server in ``distillery_api_writes_total``."""
    metrics.API_WRITES.labels(verb, kind).inc()


def error_summary(exc: BaseException) -> str:
    """One line for a failure: an API error's status, reason and message, not its
    headers and body."""
    if isinstance(exc, ApiError):
        message = exc.message
        return f"API {exc.status} {exc.reason}" + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {exc}"[:512]


class ClusterClient(Protocol):
    """What the controllers ask of the cluster: the seam between them and the API server.
    :class:`Kube` is the real one; tests use an in-memory fake (tests/support)."""

    def apply(self, obj: Mapping[str, Any]) -> None: ...
    def patch_dmd_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    def scale_dmd(self, namespace: str, name: str, replicas: int) -> None: ...
    def scale_workload(
        self, namespace: str, name: str, replicas: int, kind: str = "Deployment"
    ) -> None: ...
    def delete_child(self, namespace: str, name: str, kind: str) -> None: ...
    def remove_dmd_annotation(self, namespace: str, name: str, key: str) -> None: ...
    def post_event(
        self, dmd: Mapping[str, Any], type_: str, reason: str, message: str, now: str
    ) -> None: ...
    def read_config_map_key(self, namespace: str, name: str, key: str) -> str | None: ...
    def patch_route_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    def list_route_children(self, namespace: str, route: str) -> set[tuple[str, str]]: ...
    def node_gpu_counts(self) -> dict[str, int]: ...
    def pod_log_tail(self, namespace: str, name: str, lines: int) -> str: ...


class Kube:
    """The operator's requests, each one call of the API server."""

    def __init__(self, rest: Rest):
        self.rest = rest

    # ---- writes ------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply one child under the distillery field manager (force: the
        operator owns these fields; another writer's edit is taken back)."""
        kind, meta = obj["kind"], obj["metadata"]
        self.rest.send(
            "PATCH",
            kind_path(kind, meta["namespace"], meta["name"], "apply"),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type=APPLY,  # JSON is YAML
        )
        count_write("apply", kind)

    def patch_dmd_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.rest.send(
            "PATCH",
            _dmd_path(namespace, name, "status"),
            body={"status": dict(status)},
            content_type=MERGE,
        )
        count_write("patch-status", "DistilledModelDeployment")

    def scale_dmd(self, namespace: str, name: str, replicas: int) -> None:
        """Write spec.replicas through /scale as the autoscaler."""
        self.rest.send(
            "PATCH",
            _dmd_path(namespace, name, "scale"),
            query={"fieldManager": AUTOSCALER_FIELD_MANAGER},
            body={"spec": {"replicas": replicas}},
            content_type=MERGE,
        )
        count_write("scale", "DistilledModelDeployment")

    def scale_workload(
        self, namespace: str, name: str, replicas: int, kind: str = "Deployment"
    ) -> None:
        """Resize a Deployment or LeaderWorkerSet without touching its template (the
        stable track while a canary runs)."""
        self.rest.send(
            "PATCH",
            kind_path(kind, namespace, name, "scale") + "/scale",
            query={"fieldManager": FIELD_MANAGER},
            body={"spec": {"replicas": replicas}},
            content_type=MERGE,
        )
        count_write("scale", kind)

    def delete_child(self, namespace: str, name: str, kind: str) -> None:
        """Delete a retired child: a canary Deployment or LeaderWorkerSet, a weight
        cache's claim, fill Job or pre-pull DaemonSet, a route's retired tier (already
        gone is fine)."""
        try:
            self.rest.send(
                "DELETE",
                kind_path(kind, namespace, name, "delete"),
                query={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
        count_write("delete", kind)

    def remove_dmd_annotation(self, namespace: str, name: str, key: str) -> None:
        """Consume a one-shot command annotation (``distillery.dev/rollout``)."""
        self.rest.send(
            "PATCH",
            _dmd_path(namespace, name),
            body={"metadata": {"annotations": {key: None}}},
            content_type=MERGE,
        )
        count_write("patch", "DistilledModelDeployment")

    def list_route_children(self, namespace: str, route: str) -> set[tuple[str, str]]:
        """(kind, name) of every object labelled as ``route``'s child: what a restarted
        operator compares with the route's desired set to prune what it no longer has.
        A kind whose API is not served has none."""
        found: set[tuple[str, str]] = set()
        for kind in (*_ROUTE_BUILTIN_KINDS, *CUSTOM_CHILD_KINDS):
            try:
                listed = self.rest.json(
                    "GET",
                    kind_path(kind, namespace, verb="list"),
                    query={"labelSelector": f"{LABEL_ROUTE}={route}"},
                )
            except ApiError as exc:
                if exc.status == 404 and kind in CUSTOM_CHILD_KINDS:
                    continue
                raise
            found |= {(kind, str(i["metadata"]["name"])) for i in listed.get("items") or []}
        return found

    def patch_route_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.rest.send(
            "PATCH",
            resource_path(GROUP, VERSION, ROUTE_PLURAL, namespace, name, "status"),
            body={"status": dict(status)},
            content_type=MERGE,
        )
        count_write("patch-status", "ReasoningRoute")

    def post_event(
        self, dmd: Mapping[str, Any], type_: str, reason: str, message: str, now: str
    ) -> None:
        """An event on ``dmd`` (a DMD, or any object of the API group: a route)."""
        meta = dmd["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": str(dmd.get("kind") or "DistilledModelDeployment"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                **({"uid": meta["uid"]} if meta.get("uid") else {}),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "distillery"},
            "reportingComponent": "distillery.dev/operator",
            "reportingInstance": "distillery",
        }
        self.rest.send("POST", resource_path("", "v1", "events", meta["namespace"]), body=event)
        count_write("create", "Event")

    # ---- reads -------------------------------------------------------------------------

    def read_config_map_key(self, namespace: str, name: str, key: str) -> str | None:
        try:
            cm = self.rest.json("GET", resource_path("", "v1", "configmaps", namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        value = (cm.get("data") or {}).get(key)
        return None if value is None else str(value)

    def pod_log_tail(self, namespace: str, name: str, lines: int) -> str:
        """The last ``lines`` lines of a pod's (first container's) log."""
        return self.rest.text(
            "GET",
            resource_path("", "v1", "pods", namespace, name, "log"),
            query={"tailLines": str(lines)},
        )

    def node_gpu_counts(self) -> dict[str, int]:
        """The most allocatable ``nvidia.com/gpu`` any one node offers, per GPU product
        label (``nvidia.com/gpu.product``, as GPU Feature Discovery sets it)."""
        nodes = self.rest.json(
            "GET", resource_path("", "v1", "nodes"), query={"labelSelector": GPU_PRODUCT_LABEL}
        )
        out: dict[str, int] = {}
        for node in nodes.get("items") or []:
            product = ((node.get("metadata") or {}).get("labels") or {}).get(GPU_PRODUCT_LABEL)
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            try:
                count = int(str(allocatable.get(GPU_RESOURCE, "0")))
            except ValueError:
                continue
            if product and count > 0:
                out[product] = max(out.get(product, 0), count)
        return out

    def podmonitor_api_present(self) -> bool:
        return self._served("monitoring.coreos.com", "v1", "podmonitors")

    def httproute_api_present(self) -> bool:
        """The Gateway API's HTTPRoute is served (gateway.networking.k8s.io/v1)."""
        return self._served(*CUSTOM_CHILD_KINDS["HTTPRoute"])

    def inference_extension_present(self) -> bool:
        """The Gateway API Inference Extension's InferencePool (v1) and InferenceObjective
        are served."""
        return all(self._served(*found) for found in ROUTE_CUSTOM_KINDS.values())

    def _served(self, group: str, version: str, plural: str) -> bool:
        """The API server serves ``plural`` in ``group/version`` (discovery)."""
        try:
            found = self.rest.json("GET", f"/apis/{group}/{version}")
        except ApiError:
            return False
        return any(r.get("name") == plural for r in found.get("resources") or [])


GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"


class NodeCatalog:
    """The catalog with ``maxPerNode`` taken from the cluster's nodes, re-read at most
    every ``ttl_seconds``; the reconciler and the autoscaler plan with ``latest``.

    Without permission to list nodes (a namespaced install) the catalog's figures stand,
    and the operator says so once.
    """

    def __init__(self, kube: ClusterClient, base: Catalog, ttl_seconds: float = 60.0) -> None:
        self.kube, self.base, self.ttl_seconds = kube, base, ttl_seconds
        self.latest = base
        self._read_at = -math.inf
        self._denied = False

    async def refresh(self) -> Catalog:
        if self._denied or time.monotonic() - self._read_at < self.ttl_seconds:
            return self.latest
        self._read_at = time.monotonic()
        try:
            counts = await in_thread(self.kube.node_gpu_counts)
        except ApiError as exc:
            if exc.status in (401, 403):
                self._denied = True
                log.warning(
                    "cannot list nodes (%s): plans use the catalog's GPUs per node", exc.status
                )
            else:
                log.warning("listing nodes failed (%s): keeping the last GPU counts", exc.status)
            return self.latest
        fresh = self.base.with_node_gpus(counts)
        if fresh != self.latest:
            log.info("GPUs per node from the cluster: %s", counts)
            self.latest = fresh
        return self.latest


# The threads that make the operator's requests: asyncio.to_thread's default executor.
# One kept connection each; more would be opened and dropped on every request.
REQUEST_THREADS = min(32, (os.cpu_count() or 1) + 4)


def connect(
    kubeconfig: str | None = None, identity: str = "", pool_size: int = REQUEST_THREADS
) -> Rest:
    """A client of the API server with the operator's credentials (see
    :func:`.rest.login`): ``kubeconfig`` if given, the pod's service account in a pod,
    else ``$KUBECONFIG``.

    With an ``identity``, the user agent names the instance (``distillery/VERSION
    (IDENTITY)``), so the API server's audit log tells replicas and shards apart.
    ``pool_size`` connections are kept open (a watch holds one for its lifetime)."""
    return Rest(
        login(kubeconfig), user_agent=user_agent(identity) if identity else "", pool_size=pool_size
    )


def user_agent(identity: str) -> str:
    """The user agent of an instance's API requests."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("distillery-operator")
    except PackageNotFoundError:
        release = "unknown"
    return f"distillery/{release} ({identity})"


def unreachable_reason(kubeconfig: str | None = None, timeout: float = 10.0) -> str | None:
    """Why the API server cannot be used, in one line, or None when it answers.

    ``distillery run`` asks this once before starting, rather than logging a traceback
    per watch and retrying forever against a cluster that is not there.
    """
    try:
        rest = connect(kubeconfig, pool_size=1)
        host = rest.server
    except CredentialsError as exc:
        return f"no Kubernetes credentials: {exc} (set --kubeconfig, KUBECONFIG, or run in a pod)"
    # urllib3 logs a warning per retry; the one line below says it all.
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        rest.json("GET", "/version", timeout=timeout)
    except ApiError as exc:
        if exc.status in (401, 403):
            return f"the API server at {host} refused the credentials ({exc.status} {exc.reason})"
        return None  # it answered: anything else is reported where it matters
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = str(getattr(exc, "reason", None) or exc)
        # urllib3 prefixes its connection object's repr: keep the cause at the end.
        return f"cannot reach the API server at {host}: {reason.rpartition('): ')[2] or reason}"
    finally:
        pool_log.setLevel(level)
        rest.close()
    return None


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)
