"""The running operator: its controllers, built once from the settings, its watches,
and the loops that drive them.

kopf runs the process (start, stop, probes); :class:`Runtime` does the rest. Its watches
(:mod:`distillery.kube.informer`, what they keep: :mod:`distillery.kube.watched`) fill
the in-memory indices and report each change: a DMD's reconciles it (retrying a failure
on its own backoff), a child's or pod's reconciles its owner, a deletion forgets it.
Nothing is reconciled until every watch has listed once; then everything is. Three loops
run beside the watches, over the indices: the autoscaler's pass, canary analysis with
the reconciles of rollouts in a step, and the slow resync that repairs drift no event
reported. No finalizers: a DMD can be deleted while the operator is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from distillery import metrics
from distillery.api.conditions import rfc3339
from distillery.api.routing import ROUTE_KIND
from distillery.api.types import object_key
from distillery.autoscale.inputs import PodInfo
from distillery.autoscale.source import PrometheusOptions, PrometheusSource
from distillery.catalog import load_catalog
from distillery.kube.autoscale_controller import Autoscaler
from distillery.kube.canary_controller import CanaryAnalyzer, rollout_under_way
from distillery.kube.client import (
    Kube,
    NodeCatalog,
    connect,
    error_summary,
    in_thread,
)
from distillery.kube.informer import Change, Informers
from distillery.kube.plans import PlanCache
from distillery.kube.reconcile_controller import Reconciler
from distillery.kube.retry import RetrySchedule
from distillery.kube.route_controller import RouteReconciler, ServedApis
from distillery.kube.watched import CHILD_INDICES, watches
from distillery.reconcile.children import ChildState
from distillery.reconcile.route import demand_queries, shared_budgets
from distillery.settings import Settings

log = logging.getLogger("distillery")
# Consecutive failures before the DMD gets a Warning event: a blip stays in the log.
REPORT_AFTER_FAILURES = 3
# Reconciles under way at once. Each holds its desired state (tens of KiB) while its API
# calls wait for a worker thread; a burst of thousands of DMDs and child events would
# otherwise hold thousands at once. Enough that the event loop always has a render to do
# while others wait on the API server: 8 slowed a 500-DMD burst from 33 s to 44 s (a
# 2,000 burst from 143 s to 226 s), 32 kept 33 s (benchmarks/operator_bench.py).
CONCURRENT_RECONCILES = 32


Key = tuple[str, str]
# The indices by name (:mod:`distillery.kube.watched`): each maps (namespace, DMD name)
# to the values of the objects with that key.
Indices = Mapping[str, Mapping[Any, Any]]


@dataclass
class Runtime:
    reconciler: Reconciler
    autoscaler: Autoscaler
    analyzer: CanaryAnalyzer
    retries: RetrySchedule = field(default_factory=RetrySchedule)
    # ReasoningRoutes: None in tests that build a runtime without them.
    routes: RouteReconciler | None = None
    # The watches' indices, once every watch has listed (None until then: nothing is
    # reconciled from a partial view, which would re-create children it has not seen).
    indices: Indices | None = None
    informers: Informers | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # DMDs with a reconcile waiting for a slot: it will read the latest body, so another
    # event of the same DMD meanwhile needs no reconcile of its own.
    _queued: set[Key] = field(default_factory=set)
    _slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CONCURRENT_RECONCILES)
    )
    # Reconciles submitted by watch events and autoscaler passes, each holding only its
    # DMD's key while it waits for a slot; held here so none is collected mid-run.
    _submitted: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        # One writer of a DMD's status: the autoscaler's part goes through the reconciler.
        self.autoscaler.publish = self.autoscaling_decided

    @classmethod
    async def start(cls, cfg: Settings) -> Runtime:
        """Build the controllers from the settings and start the loops."""
        extra = []
        for path in cfg.catalog_files:
            with open(path, encoding="utf-8") as f:
                extra.append((path, f.read()))
        catalog = load_catalog(extra)
        kube = Kube(connect(cfg.kubeconfig or None, cfg.instance_identity()))
        pod_monitor = cfg.pod_monitor == "true" or (
            cfg.pod_monitor == "auto" and await in_thread(kube.podmonitor_api_present)
        )
        http_route = await in_thread(kube.httproute_api_present)
        nodes = NodeCatalog(kube, catalog, ttl_seconds=max(30.0, cfg.autoscale_interval_seconds))
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
        plans = PlanCache()  # one parse and plan per DMD generation, for both loops
        runtime = cls(
            reconciler=Reconciler(
                kube=kube,
                catalog=catalog,
                options=cfg.render_options(pod_monitor=pod_monitor, http_route=http_route),
                nodes=nodes,
                plans=plans,
            ),
            autoscaler=Autoscaler(
                kube=kube, catalog=catalog, source=source, nodes=nodes, plans=plans
            ),
            analyzer=CanaryAnalyzer(source),
            routes=RouteReconciler(
                kube=kube,
                apis=ServedApis(
                    gateway_api=kube.httproute_api_present,
                    inference_extension=kube.inference_extension_present,
                ),
                options=cfg.route_render_options(),
            ),
        )
        watched = watches()
        runtime.informers = Informers(
            connect(
                cfg.kubeconfig or None,
                cfg.instance_identity(),
                # One connection per watch, each held for its stream, plus one to list.
                pool_size=len(watched) * max(1, len(cfg.namespaces)) + 1,
            ),
            watched,
            cfg.namespaces,
            on_change=runtime.watched,
            on_ready=runtime.indexed,
        )
        runtime.informers.start(asyncio.get_running_loop())
        runtime.tasks = [
            asyncio.create_task(_every(cfg.resync_interval_seconds, runtime.resync_pass)),
            asyncio.create_task(_every(cfg.autoscale_interval_seconds, runtime.autoscale_pass)),
            asyncio.create_task(_every(cfg.rollout_interval_seconds, runtime.rollout_pass)),
        ]
        if cfg.metrics_port:
            metrics.serve(cfg.metrics_port, cfg.metrics_bind)
        if not cfg.leader_election:
            metrics.LEADER.set(1)  # the only instance
        log.info(
            "distillery started: namespaces=%s pod_monitor=%s http_route=%s "
            "catalog=%d models/%d gpus",
            cfg.namespaces or "all",
            pod_monitor,
            http_route,
            len(catalog.models),
            len(catalog.gpus),
        )
        return runtime

    async def stop(self) -> None:
        if self.informers is not None:
            self.informers.stop()
        for task in [*self.tasks, *self._submitted]:
            task.cancel()
        await self.retries.close()

    # ---- the watches ----------------------------------------------------------------

    def indexed(self) -> None:
        """Every watch has listed: reconcile everything (the level-triggered start; a
        restarted operator writes nothing where nothing differs)."""
        assert self.informers is not None
        self.indices = self.informers.indices
        for key in list(self.indices["dmd_bodies"]):
            self.submit(key)
        for store in list(self.indices["route_bodies"].values()):
            for route in store:
                self._spawn(self.reconcile_route(route, self.indices))

    def watched(self, change: Change) -> None:
        """An object of a watched resource changed (after every watch has listed)."""
        if "dmd_bodies" in change.entries:
            (ns, name), body = change.entries["dmd_bodies"]
            if change.type == "DELETED":
                self.forget(ns, name)
                self._spawn(self.tier_changed(ns, name))
            else:
                self.dmd_changed(body)
        elif "route_bodies" in change.entries:
            (ns, name), body = change.entries["route_bodies"]
            if change.type == "DELETED":
                self.forget_route(ns, name)
            elif self.indices is not None:
                self._spawn(self.reconcile_route(body, self.indices))
        else:
            # A child or pod: reconcile its owner (and its former one if it moved).
            dmds = self.indices["dmd_bodies"] if self.indices is not None else {}
            owners = {key for key, _ in (*change.entries.values(), *change.before.values())}
            for key in owners:
                if key in dmds:
                    self.submit(key)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on a task of its own, held until it ends."""
        task = asyncio.create_task(work)
        self._submitted.add(task)
        task.add_done_callback(self._submitted.discard)

    # ---- one DMD ------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any], indices: Indices) -> None:
        """Reconcile one DMD from what the indices hold; a failure is retried.

        Coalesced: while a reconcile of the DMD waits for a slot, further events of the
        DMD or its children add nothing; the waiting one reads the latest body when its
        turn comes (a burst's child events would otherwise reconcile each DMD once per
        child). An event after that point queues one more, so none is missed."""
        key = object_key(body)
        if key in self._queued:
            return
        self._queued.add(key)
        await self._reconcile_key(key, indices)

    async def _reconcile_key(self, key: Key, indices: Indices | None = None) -> None:
        """The reconcile of a queued key (in ``_queued``): wait for a slot, then read
        the DMD's latest body from the index."""
        try:
            async with self._slots:
                self._queued.discard(key)
                indices = indices if indices is not None else self.indices
                latest = list(indices["dmd_bodies"].get(key, [])) if indices else []
                if not latest or indices is None:
                    return  # deleted while it waited
                await self._reconcile_one(latest[0], indices)
        finally:
            self._queued.discard(key)

    async def _reconcile_one(self, body: Mapping[str, Any], indices: Indices) -> None:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        pods: list[PodInfo] = list(indices["dmd_pods"].get((ns, name), []))
        stuck = [p.unschedulable for p in pods if p.unschedulable]
        try:
            await self.reconciler.reconcile(
                body,
                _children(ns, name, indices),
                stuck[0] if stuck else None,
                pods=pods,
                measurement=self.analyzer.latest.get((ns, name)),
                analysis_configured=self.analyzer.configured,
                fill_pods=list(indices["fill_pods"].get((ns, name), [])),
            )
        except Exception as exc:  # noqa: BLE001 - retried, never lost
            await self._failed(
                (ns, name),
                body,
                f"{ns}/{name}",
                exc,
                lambda: self._retry("dmd_bodies", ns, name, self.reconcile),
            )
            return
        self.retries.succeeded((ns, name))
        await self.tier_changed(ns, name)

    async def autoscaling_decided(self, body: Mapping[str, Any], status: dict[str, Any]) -> None:
        """The autoscaler has a new status.autoscaling for a DMD: its reconcile writes it
        with the MetricsAvailable and ScalingLimited conditions it implies, in one patch
        (a patch here and one for the conditions would write every change twice). The
        reconcile runs on its own task: a pass over thousands of DMDs does not wait for
        their API calls, and the reconciles queue for their slots like any other."""
        ns, name = object_key(body)
        self.reconciler.autoscaled(ns, name, status)
        self.submit((ns, name))

    def dmd_changed(self, body: Mapping[str, Any]) -> None:
        """A DMD's watch event: reconcile it, unless the event only shows the status
        the last reconcile wrote."""
        if not self.reconciler.own_echo(body):
            self.submit(object_key(body))

    def submit(self, key: Key) -> None:
        """Reconcile a DMD soon, without waiting: what a watch event does. What waits
        for a slot is a task that holds only the key; the reconcile reads the latest
        body from the index when its turn comes, so a burst of thousands of events
        holds no bodies meanwhile (bodies held that way once set the operator's peak
        heap, and Python's allocator keeps a peak's arenas)."""
        if key in self._queued or self.indices is None:
            return  # one already waits, and it will read the latest body
        self._queued.add(key)
        self._spawn(self._reconcile_key(key))

    async def tier_changed(self, namespace: str, dmd: str) -> None:
        """A DMD's replicas, readiness or limits changed, or it was deleted: they are
        the inputs of the routes it is a tier of."""
        if self.indices is None:
            return
        for route in self._routes_naming(namespace, dmd):
            await self.reconcile_route(route, self.indices)

    # ---- one route ----------------------------------------------------------------

    def _routes_naming(self, namespace: str, dmd: str) -> list[Mapping[str, Any]]:
        if self.routes is None or self.indices is None or "route_bodies" not in self.indices:
            return []
        return [
            body
            for (ns, _), store in list(self.indices["route_bodies"].items())
            if ns == namespace
            for body in store
            if any(t.get("deployment") == dmd for t in (body.get("spec") or {}).get("tiers") or [])
        ]

    async def reconcile_route(self, body: Mapping[str, Any], indices: Indices) -> None:
        """Reconcile one ReasoningRoute from its tiers' DMDs in the index; a failure is
        retried on the same backoff as a DMD's."""
        if self.routes is None:
            return
        ns, name = object_key(body)
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        key = (ns, f"{ROUTE_KIND}/{name}")
        tiers = (body.get("spec") or {}).get("tiers") or []
        dmds = {
            str(t.get("deployment")): store[0]
            for t in tiers
            if (store := list(indices["dmd_bodies"].get((ns, t.get("deployment")), [])))
        }
        try:
            await self.routes.reconcile(body, dmds)
        except Exception as exc:  # noqa: BLE001 - retried, never lost
            await self._failed(
                key,
                body,
                f"route {ns}/{name}",
                exc,
                lambda: self._retry("route_bodies", ns, name, self.reconcile_route),
            )
            return
        self.retries.succeeded(key)

    def forget_route(self, namespace: str, name: str) -> None:
        if self.routes is not None:
            self.routes.forget(namespace, name)
        self.retries.forget((namespace, f"{ROUTE_KIND}/{name}"))

    async def _failed(
        self,
        key: Key,
        body: Mapping[str, Any],
        what: str,
        exc: Exception,
        retry: Callable[[], Awaitable[None]],
    ) -> None:
        """A reconcile of ``what`` (a DMD or a route) failed: count it, retry it on its
        backoff, and say so on the object after REPORT_AFTER_FAILURES in a row."""
        metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
        delay = self.retries.failed(key, retry)
        failures, why = self.retries.failures(key), error_summary(exc)
        log.warning(
            "reconcile of %s failed (%d in a row): %s%s",
            what,
            failures,
            why,
            f"; retrying in {delay:.1f}s" if delay is not None else "",
        )
        if failures == REPORT_AFTER_FAILURES:
            await self._report(body, failures, why)

    async def _report(self, body: Mapping[str, Any], failures: int, why: str) -> None:
        """Say on the object (kubectl describe) that its changes are not being applied."""
        message = f"{failures} reconciles in a row failed, retrying with backoff: {why}"
        try:
            await in_thread(
                self.reconciler.kube.post_event,
                body,
                "Warning",
                "ReconcileFailed",
                message,
                rfc3339(time.time()),
            )
        except Exception as exc:  # noqa: BLE001 - the log line above already says it
            log.warning("could not post the ReconcileFailed event: %s", error_summary(exc))

    async def _retry(
        self,
        index: str,
        namespace: str,
        name: str,
        reconcile: Callable[[Mapping[str, Any], Indices], Awaitable[None]],
    ) -> None:
        """Reconcile a DMD or route again from the latest body its index holds (none: it
        is gone)."""
        if self.indices is None:
            return
        for body in list(self.indices[index].get((namespace, name), [])):
            await reconcile(body, self.indices)

    def forget(self, namespace: str, name: str) -> None:
        """A DMD was deleted: drop what every controller remembers of it."""
        self.reconciler.forget(namespace, name)
        self.autoscaler.forget(namespace, name)
        self.analyzer.forget(namespace, name)
        self.retries.forget((namespace, name))

    # ---- the loops ----------------------------------------------------------------

    def _bodies(self) -> list[Mapping[str, Any]]:
        assert self.indices is not None
        return [b for store in list(self.indices["dmd_bodies"].values()) for b in store]

    def _pods(self) -> dict[Key, list[PodInfo]]:
        assert self.indices is not None
        return {key: list(store) for key, store in list(self.indices["dmd_pods"].items())}

    async def autoscale_pass(self) -> None:
        """One autoscaler pass over all DMDs (one query per metric)."""
        if self.indices is None:
            return
        bodies = self._bodies()
        store = (self.indices or {}).get("route_bodies", {})
        routes = [r for of_key in list(store.values()) for r in of_key]
        await self.autoscaler.run_pass(
            bodies, self._pods(), demand_queries(bodies, routes), shared_budgets(routes)
        )

    async def rollout_pass(self) -> None:
        """Measure the canaries that are in a step, then reconcile every DMD with a
        rollout under way: pauses end and analyses land without any watch event."""
        if self.indices is None:
            return
        active = [b for b in self._bodies() if rollout_under_way(b)]
        if not active:
            return
        try:
            await self.analyzer.run_pass(active, self._pods())
        except Exception as exc:  # noqa: BLE001 - the reconciles below still run
            log.warning("canary analysis pass failed: %s", error_summary(exc))
        for body in active:
            await self.reconcile(body, self.indices)

    async def resync_pass(self) -> None:
        """Reconcile every DMD: repairs drift that no event reported."""
        if self.indices is None:
            return
        for body in self._bodies():
            await self.reconcile(body, self.indices)
        for store in list(self.indices.get("route_bodies", {}).values()):
            for route in list(store):
                await self.reconcile_route(route, self.indices)


def _children(namespace: str, name: str, indices: Indices) -> dict[str, ChildState]:
    out: dict[str, ChildState] = {}
    for index_name in CHILD_INDICES:
        for state in indices[index_name].get((namespace, name), []):
            # A weight cache's Job of a long DMD name is cut to 63 characters (a label
            # value), so it may not start with the DMD's name.
            ours = state.name == name or state.name.startswith(name + "-")
            if ours or state.kind == "Job":
                out[state.key] = state
    return out


async def _every(interval: float, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` every ``interval`` seconds; a failure is logged, the loop goes on."""
    while True:
        await asyncio.sleep(interval)
        try:
            await work()
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything
            log.warning("%s failed: %s", getattr(work, "__name__", "loop"), error_summary(exc))
