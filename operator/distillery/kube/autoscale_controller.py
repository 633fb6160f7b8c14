"""The autoscaler's pass over every DMD: observe, decide, act (I/O around the policy).

One pass per interval for all DMDs: one Prometheus query per metric (grouped by pod),
then per DMD the pure :func:`distillery.autoscale.policy.decide`. A change of replicas
is written to ``spec.replicas`` through ``/scale`` as ``distillery-autoscaler`` (the way
HPA writes a Deployment); ``status.autoscaling`` is written only when what it says
changes (a decision, metrics appearing or vanishing, a new limit), so a steady state
costs no writes. The reconciler turns ``status.autoscaling`` into the
``MetricsAvailable`` and ``ScalingLimited`` conditions; in the operator the autoscaler
hands ``status.autoscaling`` to it (``publish``) so that both go in one patch, instead
of a patch here and a second one for the conditions when the watch shows the first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from distillery import metrics
from distillery.api.merge_patch import merge_patch
from distillery.api.types import AutoscalingStatus, ScalingDecision, clip, object_key
from distillery.autoscale.inputs import PodInfo, capacity, cluster_view, limits, observe
from distillery.autoscale.policy import (
    Capacity,
    Decision,
    History,
    SharedBudget,
    decide,
    from_zero,
    within_shared_budget,
)
from distillery.autoscale.source import MetricsSource, MetricsUnavailableError
from distillery.catalog import Catalog
from distillery.kube.client import (
    ClusterClient,
    NodeCatalog,
    error_summary,
    in_thread,
)
from distillery.kube.plans import PlanCache, Resolved
from distillery.kube.reconcile_controller import now_rfc3339
from distillery.render import desired_replicas, replica_startup_seconds

log = logging.getLogger("distillery.autoscaler")
Key = tuple[str, str]
MAX_DECISIONS = 10
# A DMD at zero with nothing that could wake it: said in status.autoscaling (and so in
# MetricsAvailable), rather than refused at admission, since a route may name it later.
NO_WAKE_SIGNAL = (
    "at zero with no demand signal: nothing wakes this DMD; set scaling.demandQuery, or "
    "make it a tier of a ReasoningRoute on the Inference Extension"
)


@dataclass
class Autoscaler:
    kube: ClusterClient
    catalog: Catalog
    source: MetricsSource | None
    nodes: NodeCatalog | None = None  # the reconciler's view of GPUs per node
    histories: dict[Key, History] = field(default_factory=dict)
    # Parse and plan, shared with the reconciler; the capacity derived from each plan.
    plans: PlanCache = field(default_factory=PlanCache)
    _capacity: dict[Key, tuple[Resolved, Capacity]] = field(default_factory=dict)
    _written: dict[Key, dict[str, Any]] = field(default_factory=dict)
    passes: int = 0
    # Where a changed status.autoscaling goes: None patches it here; the operator gives
    # it to the reconciler, which writes it with the conditions it implies.
    publish: Callable[[Mapping[str, Any], dict[str, Any]], Awaitable[None]] | None = None

    def forget(self, namespace: str, name: str) -> None:
        self.histories.pop((namespace, name), None)
        self._written.pop((namespace, name), None)
        self._capacity.pop((namespace, name), None)

    def _capacity_for(self, body: Mapping[str, Any]) -> tuple[Capacity, Any] | None:
        catalog = self.nodes.latest if self.nodes else self.catalog
        resolved = self.plans.resolve(body, catalog)
        if resolved is None:
            return None
        meta = body.get("metadata") or {}
        name = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        cached = self._capacity.get(name)
        if cached is not None and cached[0] is resolved:
            return cached[1], resolved[0]
        dmd, p = resolved
        cap = capacity(dmd.spec, p, replica_startup_seconds(dmd, p))
        self._capacity[name] = (resolved, cap)
        return cap, dmd

    async def run_pass(
        self,
        bodies: Iterable[Mapping[str, Any]],
        pods: Mapping[Key, list[PodInfo]],
        demand_queries: Mapping[Key, str] | None = None,
        budgets: Mapping[Key, SharedBudget] | None = None,
    ) -> None:
        """One pass. ``demand_queries`` has, per DMD, the PromQL of its demand outside
        its pods (its router's queue, or its ``demandQuery``): what wakes it from zero,
        and waiting requests on top of its engines' while it runs. ``budgets`` has the
        budget each DMD shares with others (a route's tiers): a member may spend what
        the others' current replicas leave, and each decision updates what it spends."""
        self.passes += 1
        managed = [
            b
            for b in bodies
            if ((b.get("spec") or {}).get("scaling") or {}).get("mode", "operator") == "operator"
            and not (b.get("metadata") or {}).get("deletionTimestamp")
        ]
        if not managed:
            return
        engines = {
            ((b.get("spec") or {}).get("serving") or {}).get("engine", "vllm") for b in managed
        }
        scraped: dict[Any, Any] = {}
        error: str | None = None
        if self.source is None:
            error = "no Prometheus configured (--prometheus-url): holding replicas"
        else:
            try:
                scraped = await in_thread(self.source.collect, engines)
            except MetricsUnavailableError as exc:
                error = f"{exc}: holding replicas"
        demand: dict[Key, float | None] = {}
        if self.source is not None and demand_queries:
            names = {object_key(b) for b in managed}
            wanted = {k: q for k, q in demand_queries.items() if k in names}
            if wanted:
                demand = await in_thread(self.source.demand, wanted)
        now = time.time()
        # What each DMD costs now, updated as the pass decides (a shared budget's other
        # members are charged at their latest count).
        spend = self._spend([b for b in managed if object_key(b) in (budgets or {})])
        for body in managed:
            key = object_key(body)
            shared = (budgets or {}).get(key)
            others = sum(spend.get(m, 0.0) for m in shared.members if m != key) if shared else 0.0
            try:
                cost = await self._one(
                    body, pods, scraped, error, now, demand.get(key), shared, others,
                    wakeable=key in (demand_queries or {}),
                )  # fmt: skip
                if cost is not None:
                    spend[key] = cost
            except Exception as exc:  # noqa: BLE001 - one DMD must not stop the others
                metrics.RECONCILE_ERRORS.labels(f"autoscale:{type(exc).__name__}").inc()
                log.warning(
                    "autoscaling %s failed: %s",
                    (body.get("metadata") or {}).get("name"),
                    error_summary(exc),
                )

    def _spend(self, bodies: Iterable[Mapping[str, Any]]) -> dict[Key, float]:
        """What each DMD costs per hour at its current replica count."""
        out: dict[Key, float] = {}
        for body in bodies:
            found = self._capacity_for(body)
            if found is not None:
                cap, dmd = found
                out[object_key(body)] = desired_replicas(dmd) * cap.price_per_replica_hour
        return out

    async def _one(
        self,
        body: Mapping[str, Any],
        pods: Mapping[Key, list[PodInfo]],
        scraped: Mapping[Any, Any],
        error: str | None,
        now: float,
        router_queue: float | None = None,
        shared: SharedBudget | None = None,
        others_cost: float = 0.0,
        *,
        wakeable: bool = True,
    ) -> float | None:
        """Decide and act for one DMD; returns what it costs per hour after the decision
        (None: not decided)."""
        ns, name = object_key(body)
        found = self._capacity_for(body)
        if found is None:
            return None  # Stalled spec: the reconciler says why
        cap, dmd = found
        current = desired_replicas(dmd)
        dmd_pods = pods.get((ns, name), [])
        history = self.histories.get((ns, name), History())
        if error is not None or self.source is None:
            obs_sample, stale, partial, message = None, True, False, error or ""
        else:
            obs = observe(
                ns, dmd_pods, scraped, now, self.source.fresh, dmd.spec.scaling.slo.percentile
            )
            obs_sample, stale, partial, message = obs.sample, obs.stale, obs.partial, obs.message
            if obs_sample is not None and router_queue:
                # Requests the router holds wait as surely as those in the engines' queues.
                obs_sample = replace(
                    obs_sample,
                    waiting=obs_sample.waiting + router_queue,
                    held=obs_sample.held + router_queue,
                )
        bounds = limits(dmd.spec)
        if shared is not None:
            bounds = within_shared_budget(bounds, shared, round(others_cost, 4))
        decision = decide(
            obs_sample,
            history,
            cap,
            bounds,
            cluster_view(current, dmd_pods),
            now,
            stale=stale,
        )
        decision = from_zero(decision, router_queue, bounds, current)
        if current == 0 and not wakeable:
            message = NO_WAKE_SIGNAL
        desired = decision.desired
        if partial and desired < current:
            desired = current  # never scale down on a partial view
        self.histories[(ns, name)] = decision.history
        metrics.AUTOSCALER_DESIRED_REPLICAS.labels(ns, name).set(desired)
        old = (body.get("status") or {}).get("autoscaling") or {}
        decisions = _recorded_decisions(old)
        if desired != current:
            direction = "up" if desired > current else "down"
            decisions.append(
                ScalingDecision(
                    time=now_rfc3339(),
                    from_=current,
                    to=desired,
                    reason=clip(decision.reason),
                    inputs={k: float(v) for k, v in decision.inputs.items()},
                )
            )
            log.info("scaling %s/%s %d -> %d: %s", ns, name, current, desired, decision.reason)
            await in_thread(self.kube.scale_dmd, ns, name, desired)
            metrics.SCALING_DECISIONS.labels(direction, decision.reason.split(" ")[0]).inc()
            try:
                await in_thread(
                    self.kube.post_event,
                    body,
                    "Normal",
                    f"Scaled{direction.title()}",
                    f"{current} -> {desired} replicas: {decision.reason}",
                    now_rfc3339(),
                )
            except Exception as exc:  # noqa: BLE001 - an event is never worth a failure
                log.warning("could not post event: %s", exc)
        status = _status(decision, desired, message, decisions[-MAX_DECISIONS:])
        before = self._written.get((ns, name), old)
        patch = merge_patch(before, status)
        if patch:
            if self.publish is not None:
                await self.publish(body, status)
            else:
                await in_thread(self.kube.patch_dmd_status, ns, name, {"autoscaling": patch})
            self._written[(ns, name)] = status
        return desired * cap.price_per_replica_hour


def _recorded_decisions(old: Mapping[str, Any]) -> list[ScalingDecision]:
    """The decisions status already records; one an older operator wrote in another
    shape is dropped rather than stopping the autoscaler."""
    out = []
    for entry in old.get("lastDecisions") or []:
        try:
            out.append(ScalingDecision.model_validate(entry))
        except ValidationError:
            log.warning("dropping a recorded scaling decision that does not parse: %s", entry)
    return out


def _status(
    decision: Decision, desired: int, message: str, decisions: list[ScalingDecision]
) -> dict[str, Any]:
    """status.autoscaling, built from its model (what the CRD keeps, nothing else)."""
    h = decision.history
    # Rounded: these move slowly, and status is written only when it changes.
    started = h.started is not None
    learned = h.learned_rise is not None
    return AutoscalingStatus(
        desired_replicas=desired,
        metrics_available=decision.metrics_available,
        metrics_message=clip(message),
        limited_by=clip(decision.limited_by.message) if decision.limited_by else None,
        limited_reason=decision.limited_by.reason if decision.limited_by else None,
        headroom_replicas=round(float(h.learned_rise or 0.0), 1) if started and learned else None,
        headroom_learned=learned if started else None,
        utilization_scale=round(h.utilization_scale * 20) / 20 if started else None,
        last_decisions=decisions,
    ).to_wire()
