"""Carry out the pure reconciler's decision against the API server.

One reconcile per DMD at a time (a lock per DMD: the resync, rollout and retry loops
reconcile beside the watch events). What was just written is remembered, so a
watch cache that has not caught up with our own write does not cause the same write
again; after a restart the memory is empty and the live objects' applied-hash
annotations and status are the reference, so a restart costs reads, not writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from distillery import metrics
from distillery.api.conditions import rfc3339
from distillery.api.merge_patch import merge_patch
from distillery.api.types import object_key
from distillery.autoscale.inputs import PodInfo
from distillery.catalog import Catalog
from distillery.kube.client import ClusterClient, NodeCatalog, error_summary, in_thread
from distillery.kube.plans import PlanCache
from distillery.reconcile import OWNED_STATUS, Desired, desired_state
from distillery.reconcile.cache import FillPod, parse_progress
from distillery.reconcile.children import (
    APPLIED_HASH,
    REVISION_ANNOTATION,
    ChildState,
    child_key,
)
from distillery.render import WORKLOAD_KINDS, RenderOptions
from distillery.rollout import COMMAND_ANNOTATION
from distillery.rollout.analysis import Measurement

log = logging.getLogger("distillery.reconciler")
# Lines of a running fill pod's log read for its progress: a line every 30 s, with the
# per-file lines between them.
FILL_LOG_LINES = 40
Key = tuple[str, str]


def now_rfc3339() -> str:
    return rfc3339(time.time())


def _log_rollout_change(
    namespace: str, name: str, before: Mapping[str, Any], after: Mapping[str, Any]
) -> None:
    """One line per rollout transition: phase, step and when the step started."""

    def where(status: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        ro = status.get("rollout") or {}
        return ro.get("phase"), ro.get("step"), ro.get("stepStartedAt")

    if where(before) != where(after):
        log.info("rollout of %s/%s: %s -> %s", namespace, name, where(before), where(after))


def _owned_part(status: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a status the reconciler writes (every one but the autoscaler's)."""
    return {k: v for k, v in status.items() if k in OWNED_STATUS}


def _identity(meta: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a DMD's metadata a reconcile acts on: which object, which spec, and the
    one-shot rollout command."""
    command = (meta.get("annotations") or {}).get(COMMAND_ANNOTATION)
    return (meta.get("uid"), meta.get("generation"), command)


@dataclass
class _ChildWrites:
    """What the reconciler wrote to one DMD's children, by child key (or, for scales
    and deletes, by object name), until the watch shows it."""

    applied: dict[str, str] = field(default_factory=dict)  # applied-hash annotation
    replicas: dict[str, int] = field(default_factory=dict)  # a workload's replicas
    revision: dict[str, str | None] = field(default_factory=dict)  # a workload's revision
    scaled: dict[str, int] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)


@dataclass
class Reconciler:
    kube: ClusterClient
    catalog: Catalog
    options: RenderOptions
    nodes: NodeCatalog | None = None  # GPUs per node from the cluster, when readable
    plans: PlanCache = field(default_factory=PlanCache)  # shared with the autoscaler
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # What was written to each DMD's children, until the watch shows it: per DMD, so a
    # reconcile reads its own entries and not every DMD's (a burst's reconciles each
    # scanned all of them: quadratic in the fleet).
    _written: dict[Key, _ChildWrites] = field(default_factory=dict)
    _status: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # What of the DMD's metadata the last reconcile read: its status echo is told by it.
    _last_read: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    # Reconciles of a DMD running or waiting for its lock.
    _busy: dict[Key, int] = field(default_factory=dict)
    _consumed: dict[Key, str] = field(default_factory=dict)
    # status.autoscaling as the autoscaler last decided it, and whether it was written,
    # until the watch shows it: the next reconcile writes it with the conditions it
    # implies, in one patch, and a reconcile before the watch caught up not again.
    _autoscaling: dict[Key, tuple[dict[str, Any], bool]] = field(default_factory=dict)

    def own_echo(self, body: Mapping[str, Any]) -> bool:
        """Whether a DMD's watch event only shows the status this reconciler wrote: the
        same object (uid, generation, rollout command) the last reconcile read, with our
        last status write and nothing the autoscaler decided since. Reconciling it again
        would compute what the last reconcile did (its inputs were the same: it used the
        status it wrote), so the event needs none; a burst of new DMDs makes one such
        event per status write. The watch has caught up, so the copy is let go, unless a
        reconcile that read an older body still needs it."""
        meta = body.get("metadata") or {}
        key = object_key(body)
        written = self._status.get(key)
        if written is None or meta.get("deletionTimestamp"):
            return False
        if self._last_read.get(key) != _identity(meta):
            return False
        if self._unseen_autoscaling(key, body) is not None:
            return False
        if _owned_part(body.get("status") or {}) != written:
            return False
        if key not in self._busy:
            # No reconcile of the DMD runs or waits for its turn: none read an older
            # body, so the copies can go. (One that waits read its body before this
            # event and needs them: the next reconcile lets them go instead.)
            del self._status[key]
            self._autoscaling.pop(key, None)
        return True

    def autoscaled(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """The autoscaler's new status.autoscaling for a DMD, for its next reconcile."""
        self._autoscaling[(namespace, name)] = (status, False)

    def forget(self, namespace: str, name: str) -> None:
        self._locks.pop((namespace, name), None)
        self._status.pop((namespace, name), None)
        self._last_read.pop((namespace, name), None)
        self._autoscaling.pop((namespace, name), None)
        self._consumed.pop((namespace, name), None)
        self.plans.forget(namespace, name)
        self._written.pop((namespace, name), None)
        metrics.forget(namespace, name)

    def _effective_children(
        self, namespace: str, name: str, children: Mapping[str, ChildState]
    ) -> dict[str, ChildState]:
        out = dict(children)
        written = self._written.get((namespace, name))
        if written is None:
            return out
        for key, state in children.items():
            mine = written.applied.get(key)
            if (
                mine is not None
                and state.applied_hash != mine
                and not state.conflicts
                and not state.foreign
            ):
                # The watch has not seen our last apply yet (nor the replicas it set).
                # Its revision stays the live one: the counts beside it are the old
                # template's, and a new revision with old counts would read as a rollout
                # already complete.
                replicas = written.replicas.get(key, state.spec_replicas)
                out[key] = ChildState(
                    **{**state.__dict__, "applied_hash": mine, "spec_replicas": replicas}
                )
        for key, digest in written.applied.items():
            if key not in out:
                # Applied but not yet in the watch cache.
                kind, _, suffix = key.partition("/")
                # What we applied, as the watch will show it: its revision and replicas
                # (else a rollout would see a Deployment of no revision and start one).
                out[key] = ChildState(
                    kind=kind,
                    name=f"{name}-{suffix}" if suffix else name,
                    namespace=namespace,
                    owner=name,
                    applied_hash=digest,
                    revision=written.revision.get(key),
                    spec_replicas=written.replicas.get(key),
                )
        return out

    async def reconcile(
        self,
        body: Mapping[str, Any],
        children: Mapping[str, ChildState],
        unschedulable: str | None = None,
        *,
        pods: Sequence[PodInfo] | None = None,
        measurement: Measurement | None = None,
        analysis_configured: bool = False,
        fill_pods: Sequence[FillPod] = (),
    ) -> Desired:
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        # Counted from before the lock: one that waits for it holds a body read earlier.
        self._busy[key] = self._busy.get(key, 0) + 1
        try:
            async with lock:
                started = time.perf_counter()
                try:
                    return await self._reconcile(
                        body,
                        children,
                        namespace,
                        name,
                        unschedulable,
                        pods,
                        measurement,
                        analysis_configured,
                        fill_pods,
                    )
                finally:
                    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        finally:
            if self._busy[key] <= 1:
                del self._busy[key]
            else:
                self._busy[key] -= 1

    async def _reconcile(
        self,
        body: Mapping[str, Any],
        children: Mapping[str, ChildState],
        namespace: str,
        name: str,
        unschedulable: str | None,
        pods: Sequence[PodInfo] | None,
        measurement: Measurement | None,
        analysis_configured: bool,
        fill_pods: Sequence[FillPod],
    ) -> Desired:
        key = (namespace, name)
        # Our last status write is authoritative for the fields we own until the watch
        # catches up with it; from then on the body says the same, and holding a copy
        # per DMD would only cost memory.
        effective = dict(body)
        if key in self._status:
            live = body.get("status") or {}
            if _owned_part(live) == self._status[key]:
                del self._status[key]
            else:
                effective["status"] = {**live, **self._status[key]}
        autoscaling = self._unseen_autoscaling(key, body)
        if autoscaling is None:
            self._autoscaling.pop(key, None)  # none, or written and the watch shows it
        else:
            effective["status"] = {**(effective.get("status") or {}), "autoscaling": autoscaling}
        effective["metadata"] = self._unconsumed(key, body.get("metadata") or {})
        user_template, template_error = await self._user_template(body)
        fill_pods = [await self._with_progress(namespace, p) for p in fill_pods]
        catalog = await self.nodes.refresh() if self.nodes else self.catalog
        desired = desired_state(
            effective,
            self._effective_children(namespace, name, children),
            catalog,
            now=now_rfc3339(),
            options=self.options,
            user_template=user_template,
            user_template_error=template_error,
            unschedulable=unschedulable,
            pods=pods,
            measurement=measurement,
            analysis_configured=analysis_configured,
            resolved=self.plans.resolve(effective, catalog),
            fill_pods=fill_pods,
        )
        for obj in desired.apply:
            child = child_key(obj["kind"], obj["metadata"]["name"], name)
            log.info(
                "applying %s %s/%s (%s)",
                obj["kind"],
                namespace,
                obj["metadata"]["name"],
                desired.apply_reasons.get(child, ""),
            )
            await in_thread(self.kube.apply, obj)
            written = self._written.setdefault(key, _ChildWrites())
            written.applied[child] = obj["metadata"]["annotations"][APPLIED_HASH]
            if obj["kind"] in WORKLOAD_KINDS:
                written.replicas[child] = obj["spec"]["replicas"]
                written.revision[child] = (obj["metadata"].get("annotations") or {}).get(
                    REVISION_ANNOTATION
                )
        await self._resize_and_retire(namespace, name, desired)
        if desired.clear_command:
            command = str(
                (body.get("metadata") or {}).get("annotations", {}).get(COMMAND_ANNOTATION)
            )
            await in_thread(self.kube.remove_dmd_annotation, namespace, name, COMMAND_ANNOTATION)
            self._consumed[key] = command
        await self._write_status(namespace, name, body, effective, desired, autoscaling)
        self._last_read[key] = _identity(body.get("metadata") or {})
        for event in desired.events:
            try:
                await in_thread(
                    self.kube.post_event,
                    body,
                    event.type,
                    event.reason,
                    event.message,
                    now_rfc3339(),
                )
            except Exception as exc:  # noqa: BLE001 - an event is never worth a failure
                log.warning("could not post event %s: %s", event.reason, exc)
        self._record_metrics(namespace, name, desired)
        return desired

    def _unseen_autoscaling(self, key: Key, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The autoscaler's status.autoscaling that the body does not show yet, or None."""
        found = self._autoscaling.get(key)
        if found is None:
            return None
        live = (body.get("status") or {}).get("autoscaling") or {}
        return found[0] if merge_patch(live, found[0]) else None

    async def _write_status(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        effective: Mapping[str, Any],
        desired: Desired,
        autoscaling: dict[str, Any] | None,
    ) -> None:
        """One status patch: the fields the reconciler owns that changed, and the
        autoscaler's status.autoscaling when it has a new one."""
        patch: dict[str, Any] = {}
        owned: dict[str, Any] | None = None
        live = effective.get("status") or {}
        if desired.status_changed:
            owned = _owned_part(desired.status)
            # Null for what the new status no longer has: a merge patch keeps it otherwise.
            patch = merge_patch(_owned_part(live), owned)
        key = (namespace, name)
        if autoscaling is not None and not self._autoscaling[key][1]:
            seen = (body.get("status") or {}).get("autoscaling") or {}
            patch["autoscaling"] = merge_patch(seen, autoscaling)
        if not patch:
            return
        await in_thread(self.kube.patch_dmd_status, namespace, name, patch)
        latest = self._autoscaling.get(key)
        if "autoscaling" in patch and latest is not None and latest[0] is autoscaling:
            self._autoscaling[key] = (latest[0], True)  # not one decided meanwhile
        if owned is not None:
            self._status[key] = owned
            _log_rollout_change(namespace, name, live, owned)

    def _unconsumed(self, key: Key, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Metadata without a rollout command we already acted on (the watch may not have
        seen its removal yet): a command acts once."""
        annotations = dict(meta.get("annotations") or {})
        value = annotations.get(COMMAND_ANNOTATION)
        if value is None:
            self._consumed.pop(key, None)
        elif self._consumed.get(key) == value:
            annotations.pop(COMMAND_ANNOTATION)
        return {**meta, "annotations": annotations}

    async def _resize_and_retire(
        self,
        namespace: str,
        name: str,
        desired: Desired,
    ) -> None:
        """The stable track's size while a canary runs (or a new weight cache fills), and
        the deletes of a retired canary and of retired weight caches."""
        written = self._written.get((namespace, name))
        if written is None:
            if not desired.scale and not desired.delete:
                return
            written = self._written.setdefault((namespace, name), _ChildWrites())
        for (kind, dep), replicas in desired.scale.items():
            if written.scaled.get(dep) == replicas:
                continue  # written; the watch has not caught up
            log.info("scaling %s %s/%s to %d (template held)", kind, namespace, dep, replicas)
            await in_thread(self.kube.scale_workload, namespace, dep, replicas, kind)
            written.scaled[dep] = replicas
        scaled = {dep for _, dep in desired.scale}
        for dep in [d for d in written.scaled if d not in scaled]:
            written.scaled.pop(dep, None)
        for kind, dep in desired.delete:
            child = child_key(kind, dep, name)
            for table in (written.applied, written.replicas, written.revision):
                table.pop(child, None)
            if dep in written.deleted:
                continue  # deleted; the watch has not caught up
            what = "retired canary" if kind in WORKLOAD_KINDS else "retired weight cache"
            log.info("deleting %s %s %s/%s", what, kind, namespace, dep)
            await in_thread(self.kube.delete_child, namespace, dep, kind)
            written.deleted.add(dep)
        written.deleted &= {dep for _, dep in desired.delete}

    async def _with_progress(self, namespace: str, pod: FillPod) -> FillPod:
        """A running fill pod with how far it is, from the last progress line of its
        log. Best effort: without it the status shows the estimate only."""
        if pod.phase != "Running":
            return pod
        try:
            tail = await in_thread(self.kube.pod_log_tail, namespace, pod.name, FILL_LOG_LINES)
        except Exception as exc:  # noqa: BLE001 - progress is never worth a failure
            log.debug("no progress from %s/%s: %s", namespace, pod.name, error_summary(exc))
            return pod
        return replace(pod, progress_bytes=parse_progress(tail))

    async def _user_template(self, body: Mapping[str, Any]) -> tuple[str | None, str | None]:
        ref = ((body.get("spec") or {}).get("serving") or {}).get("templateRef")
        if not ref:
            return None, None
        namespace = (body.get("metadata") or {}).get("namespace", "default")
        key = ref.get("key") or "pod.yaml.j2"
        text = await in_thread(self.kube.read_config_map_key, namespace, ref["name"], key)
        if text is None:
            return None, (
                f"spec.serving.templateRef: ConfigMap {ref['name']} with key {key} "
                f"not found in namespace {namespace}"
            )
        return text, None

    def _record_metrics(self, namespace: str, name: str, desired: Desired) -> None:
        status = desired.status
        metrics.STALLED.labels(namespace, name).set(1 if desired.stalled_reason else 0)
        limited = any(
            c.get("type") == "ScalingLimited"
            and c.get("status") == "True"
            and c.get("reason") == "BudgetLimited"
            for c in status.get("conditions") or []
        )
        metrics.BUDGET_LIMITED.labels(namespace, name).set(1 if limited else 0)
        if desired.stalled_reason:
            return
        metrics.CURRENT_REPLICAS.labels(namespace, name).set(status.get("replicas") or 0)
        metrics.READY_REPLICAS.labels(namespace, name).set(status.get("readyReplicas") or 0)
        cost = status.get("cost") or {}
        metrics.COST_PER_HOUR.labels(namespace, name).set(cost.get("currentPerHour") or 0)
        if desired.rendered is not None:
            replicas = desired.rendered.workload["spec"]["replicas"]
            metrics.DESIRED_REPLICAS.labels(namespace, name).set(replicas)
