"""The Kubernetes edge: server-side apply of children, status patches, reads, events.

Everything here talks to the API server through the synchronous ``kubernetes`` client,
so every call runs in a worker thread (``asyncio.to_thread``), never on kopf's event
loop. Writes go through one field manager, ``distillery``; the autoscaler writes
``spec.replicas`` through ``/scale`` as ``distillery-autoscaler``. Every write is counted
here, in ``distillery_api_writes_total``, so a steady state can be shown to cost none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any, Protocol, cast

import urllib3
from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

from distillery import metrics
from distillery.api.routing import ROUTE_KIND, ROUTE_PLURAL
from distillery.api.types import GROUP, PLURAL, VERSION
from distillery.catalog import Catalog
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
# The LeaderWorkerSet API (sigs.k8s.io/lws): multi-node replicas.
LWS = (LWS_GROUP, LWS_VERSION)
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


# The built-in kinds the operator writes: the typed API that serves each (an attribute
# of Kube) and the resource's name in that API's methods (patch_namespaced_<name>, ...).
_TYPED_KINDS = {
    "Deployment": ("apps", "deployment"),
    "DaemonSet": ("apps", "daemon_set"),
    "Service": ("core", "service"),
    "ServiceAccount": ("core", "service_account"),
    "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    "PodDisruptionBudget": ("policy", "pod_disruption_budget"),
    "Job": ("batch", "job"),
    "Role": ("rbac", "role"),
    "RoleBinding": ("rbac", "role_binding"),
}
# The custom resources a DMD renders besides those of routes and gateways.
_DMD_CUSTOM_KINDS = {
    "LeaderWorkerSet": (*LWS, LWS_PLURAL),
    "PodMonitor": ("monitoring.coreos.com", "v1", "podmonitors"),
}


def _custom_kind(kind: str, verb: str) -> tuple[str, str, str]:
    """(group, version, plural) of a custom kind the operator writes; any other kind is
    a programming error, named."""
    found = CUSTOM_CHILD_KINDS.get(kind) or _DMD_CUSTOM_KINDS.get(kind)
    if found is None:
        raise ValueError(f"distillery does not {verb} {kind}")
    return found


def count_write(verb: str, kind: str) -> None:
    """Count one write to the API server in ``distillery_api_writes_total``."""
    metrics.API_WRITES.labels(verb, kind).inc()


def error_summary(exc: BaseException) -> str:
    """One line for a failure: an API error's status, reason and message, not its
    headers and body."""
    if isinstance(exc, ApiException):
        message = ""
        try:
            message = str(json.loads(exc.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            message = ""
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
    """A thin wrapper over the API groups distillery uses."""

    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or new_api_client()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.policy = client.PolicyV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)

    def _typed(self, kind: str, verb: str) -> Any:
        """The typed client's ``<verb>_namespaced_<resource>`` method for a built-in kind."""
        api, resource = _TYPED_KINDS[kind]
        return getattr(getattr(self, api), f"{verb}_namespaced_{resource}")

    # ---- writes ------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply one child under the distillery field manager (force: the
        operator owns these fields; another writer's edit is taken back)."""
        kind, meta = obj["kind"], obj["metadata"]
        name, ns = meta["name"], meta["namespace"]
        kwargs: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY,
            **UNREAD,
        }
        body = dict(obj)
        reply: Any  # the unread reply (UNREAD), not the typed model the stubs declare
        if kind in _TYPED_KINDS:
            reply = self._typed(kind, "patch")(name, ns, body, **kwargs)
        else:
            group, version, plural = _custom_kind(kind, "apply")
            reply = self.custom.patch_namespaced_custom_object(
                group, version, ns, plural, name, body, **kwargs
            )
        _done(reply)
        count_write("apply", kind)

    def patch_dmd_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        reply: Any = self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE,
            **UNREAD,
        )
        _done(reply)
        count_write("patch-status", "DistilledModelDeployment")

    def scale_dmd(self, namespace: str, name: str, replicas: int) -> None:
        """Write spec.replicas through /scale as the autoscaler."""
        reply = self.custom.patch_namespaced_custom_object_scale(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"spec": {"replicas": replicas}},
            field_manager=AUTOSCALER_FIELD_MANAGER,
            _content_type=MERGE,
            **UNREAD,
        )
        _done(reply)
        count_write("scale", "DistilledModelDeployment")

    def scale_workload(
        self, namespace: str, name: str, replicas: int, kind: str = "Deployment"
    ) -> None:
        """Resize a Deployment or LeaderWorkerSet without touching its template (the
        stable track while a canary runs)."""
        body = {"spec": {"replicas": replicas}}
        if kind == "LeaderWorkerSet":
            self.custom.patch_namespaced_custom_object_scale(
                *LWS, namespace, LWS_PLURAL, name, body,
                field_manager=FIELD_MANAGER, _content_type=MERGE,
            )  # fmt: skip
        else:
            self.apps.patch_namespaced_deployment_scale(
                name, namespace, body, field_manager=FIELD_MANAGER, _content_type=MERGE
            )
        count_write("scale", kind)

    def delete_child(self, namespace: str, name: str, kind: str) -> None:
        """Delete a retired child: a canary Deployment or LeaderWorkerSet, a weight
        cache's claim, fill Job or pre-pull DaemonSet, a route's retired tier (already
        gone is fine)."""
        try:
            if kind in _TYPED_KINDS:
                self._typed(kind, "delete")(name, namespace, propagation_policy="Background")
            else:
                group, version, plural = _custom_kind(kind, "delete")
                self.custom.delete_namespaced_custom_object(
                    group, version, namespace, plural, name, propagation_policy="Background"
                )
        except ApiException as exc:
            if exc.status != 404:
                raise
        count_write("delete", kind)

    def remove_dmd_annotation(self, namespace: str, name: str, key: str) -> None:
        """Consume a one-shot command annotation (``distillery.dev/rollout``)."""
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"metadata": {"annotations": {key: None}}},
            _content_type=MERGE,
        )
        count_write("patch", "DistilledModelDeployment")

    def list_route_children(self, namespace: str, route: str) -> set[tuple[str, str]]:
        """(kind, name) of every object labelled as ``route``'s child: what a restarted
        operator compares with the route's desired set to prune what it no longer has.
        A kind whose API is not served has none."""
        selector = f"{LABEL_ROUTE}={route}"
        found: set[tuple[str, str]] = set()
        for kind in ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"):
            listed_typed = self._typed(kind, "list")(namespace, label_selector=selector)
            for item in listed_typed.items:
                found.add((kind, str(item.metadata.name)))
        for kind, (group, version, plural) in CUSTOM_CHILD_KINDS.items():
            try:
                listed = self.custom.list_namespaced_custom_object(
                    group, version, namespace, plural, label_selector=selector
                )
                items = cast(dict[str, Any], listed).get("items") or []
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            found |= {(kind, str(i["metadata"]["name"])) for i in items}
        return found

    def patch_route_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            ROUTE_PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE,
        )
        count_write("patch-status", ROUTE_KIND)

    def post_event(
        self, dmd: Mapping[str, Any], type_: str, reason: str, message: str, now: str
    ) -> None:
        """An event on ``dmd`` (a DMD, or any object of the API group: a route)."""
        meta = dmd["metadata"]
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=meta["namespace"]
            ),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=str(dmd.get("kind") or "DistilledModelDeployment"),
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="distillery"),
            reporting_component="distillery.dev/operator",
            reporting_instance="distillery",
        )
        self.core.create_namespaced_event(meta["namespace"], event)
        count_write("create", "Event")

    # ---- reads -------------------------------------------------------------------------

    def read_config_map_key(self, namespace: str, name: str, key: str) -> str | None:
        try:
            cm = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return (cm.data or {}).get(key)

    def pod_log_tail(self, namespace: str, name: str, lines: int) -> str:
        """The last ``lines`` lines of a pod's (first container's) log."""
        text = self.core.read_namespaced_pod_log(name, namespace, tail_lines=lines)
        return str(text or "")

    def node_gpu_counts(self) -> dict[str, int]:
        """The most allocatable ``nvidia.com/gpu`` any one node offers, per GPU product
        label (``nvidia.com/gpu.product``, as GPU Feature Discovery sets it)."""
        nodes = self.core.list_node(label_selector=GPU_PRODUCT_LABEL)
        out: dict[str, int] = {}
        for node in nodes.items:
            labels = (node.metadata.labels if node.metadata else None) or {}
            product = labels.get(GPU_PRODUCT_LABEL)
            allocatable = (node.status.allocatable or {}) if node.status else {}
            try:
                count = int(str(allocatable.get(GPU_RESOURCE, "0")))
            except ValueError:
                continue
            if product and count > 0:
                out[product] = max(out.get(product, 0), count)
        return out

    def podmonitor_api_present(self) -> bool:
        return self._group_present("monitoring.coreos.com")

    def httproute_api_present(self) -> bool:
        """The Gateway API's HTTPRoute is served (gateway.networking.k8s.io/v1)."""
        if not self._group_present("gateway.networking.k8s.io"):
            return False
        try:
            found = self.custom.get_api_resources("gateway.networking.k8s.io", "v1")
        except ApiException:
            return False
        return any(r.name == "httproutes" for r in (found.resources or []))

    def inference_extension_present(self) -> bool:
        """The Gateway API Inference Extension's InferencePool (v1) and InferenceObjective
        are served."""
        for group, version, plural in ROUTE_CUSTOM_KINDS.values():
            if not self._group_present(group):
                return False
            try:
                found = self.custom.get_api_resources(group, version)
            except ApiException:
                return False
            if not any(r.name == plural for r in (found.resources or [])):
                return False
        return True

    def _group_present(self, group: str) -> bool:
        try:
            groups = client.ApisApi(self.api).get_api_versions().groups or []
        except ApiException:
            return False
        return any(g.name == group for g in groups)


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
        except ApiException as exc:
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


def new_api_client(
    kubeconfig: str | None = None, identity: str = "", pool_size: int | None = None
) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig.

    With an ``identity``, the user agent names the instance (``distillery/VERSION
    (IDENTITY)``), so the API server's audit log tells replicas and shards apart. With a
    ``pool_size``, that many connections are kept open (the client's default is five
    times the CPUs, fewer than the watches on a small machine)."""
    api: client.ApiClient | None = None
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api = client.ApiClient()
        except config.ConfigException:
            pass
    if api is None:
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg
        )
        api = client.ApiClient(cfg)
    if pool_size is not None:
        api.configuration.connection_pool_maxsize = pool_size
        api.rest_client = rest.RESTClientObject(api.configuration)
    if identity:
        api.user_agent = user_agent(identity)
    return api


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

    ``distillery run`` asks this once before starting kopf, which would otherwise log a
    traceback per watch and retry forever against a cluster that is not there.
    """
    try:
        api = new_api_client(kubeconfig)
    except (config.ConfigException, OSError) as exc:
        return f"no Kubernetes credentials: {exc} (set --kubeconfig, KUBECONFIG, or run in a pod)"
    host = api.configuration.host
    # urllib3 logs a warning per retry; the one line below says it all.
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        client.VersionApi(api).get_code(_request_timeout=timeout)
    except ApiException as exc:
        if exc.status in (401, 403):
            return f"the API server at {host} refused the credentials ({exc.status} {exc.reason})"
        return None  # it answered: anything else is kopf's to report
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = str(getattr(exc, "reason", None) or exc)
        # urllib3 prefixes its connection object's repr: keep the cause at the end.
        return f"cannot reach the API server at {host}: {reason.rpartition('): ')[2] or reason}"
    finally:
        pool_log.setLevel(level)
        api.close()  # type: ignore[no-untyped-call]
    return None


# Writes whose reply is not read: the API server answers with the whole object
# (managedFields and all), which the client would decode into typed models only to drop
# them, costing CPU and short-lived heap per write, thousands of writes in a burst.
# Errors still raise ApiException (the client checks the status first).
UNREAD: dict[str, Any] = {"_preload_content": False}


def _done(reply: Any) -> None:
    """Return an unread reply's connection to the pool."""
    reply.drain_conn()
    reply.release_conn()


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)
