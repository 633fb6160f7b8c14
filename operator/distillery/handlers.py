"""kopf registrations, and nothing else: each handler delegates to the reconciler.

Level-triggered: every event of a DMD, every event of one of its children, and a slow
resync timer call the same reconcile, which recomputes the desired state from scratch
and writes only what differs. Children are tracked by in-memory indices fed by kopf's
watches, so a reconcile reads nothing from the API server in the common case, and kopf
fills the indices before any handler runs, so a restarted operator sees its children
before deciding anything.

No finalizers: children carry owner references and are garbage-collected; a DMD can be
deleted while the operator is down. Handlers return None (kopf would store a return
value in status, which the schema prunes).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from distillery import metrics
from distillery.api.types import GROUP, PLURAL, VERSION
from distillery.autoscale.inputs import PodInfo, pod_failure
from distillery.autoscale.source import PrometheusOptions, PrometheusSource
from distillery.catalog import load_catalog
from distillery.kube import Kube, NodeCatalog, in_thread, new_api_client
from distillery.kube.autoscale_controller import Autoscaler
from distillery.kube.canary_controller import CanaryAnalyzer, rollout_under_way
from distillery.kube.reconcile_controller import Reconciler
from distillery.kube.retry import RetrySchedule
from distillery.reconcile.children import (
    OWNER_LABEL,
    REVISION_ANNOTATION,
    TRACK_LABEL,
    ChildState,
    child_state,
)
from distillery.rollout import COMMAND_ANNOTATION
from distillery.settings import Settings

DMD = (GROUP, VERSION, PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": "distillery"}
log = logging.getLogger("distillery")


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
    settings.networking.request_timeout = 60
    # Our own events carry the meaningful transitions; kopf posts only its warnings.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "distillery.dev/operator"
    settings.execution.max_workers = 8
    settings.peering.standalone = not cfg.peering
    if cfg.peering:
        settings.peering.name = cfg.peering
        settings.peering.priority = cfg.priority
    extra = []
    for path in cfg.catalog_files:
        with open(path, encoding="utf-8") as f:
            extra.append((path, f.read()))
    catalog = load_catalog(extra)
    kube = Kube(new_api_client(cfg.kubeconfig or None))
    pod_monitor = cfg.pod_monitor == "true" or (
        cfg.pod_monitor == "auto" and await in_thread(kube.podmonitor_api_present)
    )
    http_route = await in_thread(kube.httproute_api_present)
    nodes = NodeCatalog(kube, catalog, ttl_seconds=max(30.0, cfg.autoscale_interval_seconds))
    memo.reconciler = Reconciler(
        kube=kube,
        catalog=catalog,
        options=cfg.render_options(pod_monitor=pod_monitor, http_route=http_route),
        nodes=nodes,
    )
    # kopf gives each object a shallow copy of the memo: a dict set here is shared by all
    # of them, so handlers can hand the live indices to the operator-level loops.
    memo.shared = {"indices": None}
    memo.retries = RetrySchedule()
    memo.resync_task = asyncio.create_task(_resync_loop(memo, cfg.resync_interval_seconds))
    source = None
    if cfg.prometheus_url:
        source = PrometheusSource(
            PrometheusOptions(
                url=cfg.prometheus_url,
                bearer_token_file=cfg.prometheus_bearer_token_file,
                ca_file=cfg.prometheus_ca_file,
                insecure_skip_verify=cfg.prometheus_insecure_skip_verify,
                stale_after_seconds=max(60.0, 4 * cfg.autoscale_interval_seconds),
            )
        )
    memo.autoscaler = Autoscaler(kube=kube, catalog=catalog, source=source, nodes=nodes)
    memo.autoscale_task = asyncio.create_task(_autoscale_loop(memo, cfg.autoscale_interval_seconds))
    memo.analyzer = CanaryAnalyzer(source)
    memo.rollout_task = asyncio.create_task(_rollout_loop(memo, cfg.rollout_interval_seconds))
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, addr=cfg.metrics_bind, registry=metrics.REGISTRY)
    log.info(
        "distillery started: namespaces=%s pod_monitor=%s http_route=%s catalog=%d models/%d gpus",
        cfg.namespaces or "all",
        pod_monitor,
        http_route,
        len(catalog.models),
        len(catalog.gpus),
    )


# ---- indices ----------------------------------------------------------------------------

CHILD_INDICES = ("child_deployments", "child_services", "child_pdbs", "child_routes")
INDICES = ("dmd_bodies", "dmd_pods", *CHILD_INDICES)


@kopf.index(*DMD)
def dmd_bodies(**kwargs: Any) -> dict[Any, Any]:
    # Only what reconciling reads: managedFields and the rest would cost memory per DMD.
    body = kwargs["body"]
    meta = body.get("metadata") or {}
    kept = {
        k: meta[k]
        for k in ("name", "namespace", "uid", "generation", "deletionTimestamp")
        if k in meta
    }
    command = (meta.get("annotations") or {}).get(COMMAND_ANNOTATION)
    if command is not None:
        kept["annotations"] = {COMMAND_ANNOTATION: command}
    slim = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": kept,
        "spec": body.get("spec"),
        "status": body.get("status"),
    }
    return {(kwargs["namespace"], kwargs["name"]): slim}


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
    )
    return {(meta.get("namespace"), labels.get(OWNER_LABEL)): info}


def _child(body: kopf.Body) -> dict[Any, ChildState]:
    state = child_state(body)
    return {(state.namespace, state.owner): state} if state.owner else {}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def child_deployments(**kwargs: Any) -> dict[Any, ChildState]:
    return _child(kwargs["body"])


@kopf.index("v1", "services", labels=MANAGED)
def child_services(**kwargs: Any) -> dict[Any, ChildState]:
    return _child(kwargs["body"])


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
def child_pdbs(**kwargs: Any) -> dict[Any, ChildState]:
    return _child(kwargs["body"])


# Served only where the Gateway API is installed; kopf skips it elsewhere.
@kopf.index("gateway.networking.k8s.io", "v1", "httproutes", labels=MANAGED)
def child_routes(**kwargs: Any) -> dict[Any, ChildState]:
    return _child(kwargs["body"])


def _children(namespace: str, name: str, kwargs: dict[str, Any]) -> dict[str, ChildState]:
    out: dict[str, ChildState] = {}
    for index_name in CHILD_INDICES:
        for state in kwargs[index_name].get((namespace, name), []):
            if state.name == name or state.name.startswith(name + "-"):
                out[state.key] = state
    return out


async def _reconcile(body: Any, kwargs: dict[str, Any]) -> None:
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    ns, name = str(meta.get("namespace")), str(meta.get("name"))
    children = _children(ns, name, kwargs)
    pods = list(kwargs["dmd_pods"].get((ns, name), []))
    stuck = [p.unschedulable for p in pods if p.unschedulable]
    memo = kwargs["memo"]
    analyzer: CanaryAnalyzer | None = getattr(memo, "analyzer", None)
    retries: RetrySchedule = memo.retries
    try:
        await memo.reconciler.reconcile(
            body,
            children,
            stuck[0] if stuck else None,
            pods=pods,
            measurement=analyzer.latest.get((ns, name)) if analyzer else None,
            analysis_configured=analyzer is not None and analyzer.configured,
        )
    except Exception as exc:  # noqa: BLE001 - retried below, never lost
        metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
        delay = retries.failed((ns, name), lambda: _retry(memo, ns, name))
        log.warning(
            "reconcile of %s/%s failed (%d in a row): %s%s",
            ns,
            name,
            retries.failures((ns, name)),
            exc,
            f"; retrying in {delay:.1f}s" if delay is not None else "",
        )
        return
    retries.succeeded((ns, name))


async def _retry(memo: kopf.Memo, namespace: str, name: str) -> None:
    """Reconcile a DMD again from the latest body the index holds (none: it is gone)."""
    indices = memo.shared["indices"]
    if indices is None:
        return
    for body in list(indices["dmd_bodies"].get((namespace, name), [])):
        await _reconcile(body, {**indices, "memo": memo})


# ---- handlers ---------------------------------------------------------------------------


def _remember_indices(kwargs: dict[str, Any]) -> None:
    shared = kwargs["memo"].shared
    if shared["indices"] is None:
        # kopf hands the same live Index objects to every handler: keep them for the
        # operator-level loops.
        shared["indices"] = {n: kwargs[n] for n in INDICES}


@kopf.on.event(*DMD)
async def dmd_event(**kwargs: Any) -> None:
    _remember_indices(kwargs)
    body = kwargs["body"]
    if kwargs["event"].get("type") == "DELETED":
        kwargs["memo"].reconciler.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        kwargs["memo"].autoscaler.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        kwargs["memo"].analyzer.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        kwargs["memo"].retries.forget((body["metadata"]["namespace"], body["metadata"]["name"]))
        return
    await _reconcile(body, kwargs)


async def _autoscale_loop(memo: kopf.Memo, interval: float) -> None:
    """Every interval, one autoscaler pass over all DMDs (one query per metric)."""
    while True:
        await asyncio.sleep(interval)
        indices = memo.shared["indices"]
        if indices is None:
            continue
        bodies = [b for store in list(indices["dmd_bodies"].values()) for b in store]
        pods = {key: list(store) for key, store in list(indices["dmd_pods"].items())}
        try:
            await memo.autoscaler.run_pass(bodies, pods)
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything
            log.warning("autoscaler pass failed: %s", exc)


async def _rollout_loop(memo: kopf.Memo, interval: float) -> None:
    """Every interval, measure the canaries that are in a step, then reconcile every DMD
    with a rollout under way: pauses end and analyses land without any watch event."""
    while True:
        await asyncio.sleep(interval)
        indices = memo.shared["indices"]
        if indices is None:
            continue
        bodies = [b for store in list(indices["dmd_bodies"].values()) for b in store]
        active = [b for b in bodies if rollout_under_way(b)]
        if not active:
            continue
        pods = {key: list(store) for key, store in list(indices["dmd_pods"].items())}
        try:
            await memo.analyzer.run_pass(active, pods)
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything
            log.warning("canary analysis pass failed: %s", exc)
        for body in active:
            await _reconcile(body, {**indices, "memo": memo})


async def _resync_loop(memo: kopf.Memo, interval: float) -> None:
    """Reconcile every DMD now and then: repairs drift that no event reported (failures
    are retried sooner, on the retry schedule). An operator-level task over the index,
    not a kopf timer: kopf puts a finalizer on objects with timers, and a finalizer would
    block deletes while the operator is down."""
    while True:
        await asyncio.sleep(interval)
        indices = memo.shared["indices"]
        if indices is None:
            continue
        for store in list(indices["dmd_bodies"].values()):
            for body in list(store):
                await _reconcile(body, {**indices, "memo": memo})


async def _on_child(**kwargs: Any) -> None:
    """A child changed: reconcile its owner (from the index, no API read)."""
    _remember_indices(kwargs)
    meta = kwargs["body"].get("metadata") or {}
    owner = (meta.get("labels") or {}).get(OWNER_LABEL)
    if not owner:
        return
    for dmd in kwargs["dmd_bodies"].get((meta.get("namespace"), owner), []):
        await _reconcile(dmd, kwargs)


kopf.on.event("apps", "v1", "deployments", labels=MANAGED, id="deployment_event")(_on_child)
kopf.on.event("v1", "services", labels=MANAGED, id="service_event")(_on_child)
kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED, id="pdb_event")(_on_child)
kopf.on.event(
    "gateway.networking.k8s.io", "v1", "httproutes", labels=MANAGED, id="httproute_event"
)(_on_child)
# Pods matter only for why replicas are missing (Unschedulable): the owner is reconciled
# and its status written only if that changes.
kopf.on.event("v1", "pods", labels={OWNER_LABEL: kopf.PRESENT}, id="pod_event")(_on_child)


@kopf.on.cleanup()
async def cleanup(**kwargs: Any) -> None:
    for name in ("resync_task", "autoscale_task", "rollout_task"):
        task = getattr(kwargs["memo"], name, None)
        if task is not None:
            task.cancel()
    retries: RetrySchedule | None = getattr(kwargs["memo"], "retries", None)
    if retries is not None:
        await retries.close()


@kopf.on.probe(id="reconciler")
def probe(**kwargs: Any) -> str:
    return "ok" if getattr(kwargs["memo"], "reconciler", None) is not None else "starting"
