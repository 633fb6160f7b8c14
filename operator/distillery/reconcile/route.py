"""A ReasoningRoute's desired state from what its tiers' DMDs report (pure).

The route controller reads each tier's DMD from the operator's index (spec and status,
as the DMD reconciler and the autoscaler wrote them) and asks this module for the
children to apply, the status to write and the events to post. Nothing here reads the
cluster: a DMD that is missing is a tier that is missing, said in ``Ready``.

Spill is decided from the DMD's own status, so it follows the same evidence the DMD
shows in ``kubectl get``: a tier is ``AtZero`` while it has no ready replica, and
``Saturated`` while its ``ScalingLimited`` condition is True (the autoscaler holds it
below what its load asks, at maxReplicas or the budget). A tier spills only to a tier
that has a ready replica itself: spilling into nothing would drop what holding keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillery.api.conditions import READY, SCALING_LIMITED, ConditionState, condition
from distillery.api.events import Event
from distillery.api.routing import ReasoningRoute, ReasoningRouteStatus, SpillWhen, TierStatus
from distillery.api.types import object_key
from distillery.autoscale.policy import SharedBudget
from distillery.engines.model import PORT
from distillery.render.routing import (
    RenderedRoute,
    RouteRenderError,
    RouteRenderOptions,
    TierBackend,
    picker_queue_query,
    render_route,
)

# A spill for saturation holds at least this long: sending a tier's load elsewhere takes
# away the load that made it saturated, so without a hold the route would flip back and
# forth at every reconcile. Five minutes, like a scale-down's stabilization window.
SPILL_HOLD_SECONDS = 300.0
ROUTED = "Routed"
INFERENCE_EXTENSION = "InferenceExtension"


@dataclass(frozen=True, kw_only=True)
class TierView:
    """What a route needs of a tier's DMD, read from its body."""

    engine: str
    multi_node: bool
    replicas: int
    ready_replicas: int
    cost_per_hour: float
    scaling_limited: bool

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> TierView:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        limited = any(
            c.get("type") == SCALING_LIMITED and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        return cls(
            engine=str((spec.get("serving") or {}).get("engine") or "vllm"),
            multi_node=int((status.get("placement") or {}).get("nodes") or 1) > 1,
            replicas=int(status.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            cost_per_hour=float((status.get("cost") or {}).get("currentPerHour") or 0.0),
            scaling_limited=limited,
        )


@dataclass(frozen=True, kw_only=True)
class RouteDesired:
    objects: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    conditions: list[ConditionState] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # tier -> the spill under way
    spills: dict[str, Spill] = field(default_factory=dict)


def spill_reason(view: TierView, when: list[SpillWhen]) -> str | None:
    """Why a tier's requests should go elsewhere now, or None."""
    if "AtZero" in when and view.ready_replicas == 0:
        return "AtZero"
    if "Saturated" in when and view.scaling_limited:
        return "Saturated"
    return None


@dataclass(frozen=True, kw_only=True)
class Spill:
    """A spill under way: to which tier, why, and since when (epoch seconds)."""

    to: str
    reason: str
    since: float


def decide_spills(
    route: ReasoningRoute,
    views: Mapping[str, TierView],
    previous: Mapping[str, Spill] | None = None,
    now: float = 0.0,
) -> dict[str, Spill]:
    """The tiers that spill now. A spill for saturation started less than
    :data:`SPILL_HOLD_SECONDS` ago holds while its target serves."""
    out: dict[str, Spill] = {}
    for rule in route.spec.spill:
        source, target = views.get(rule.from_), views.get(rule.to)
        if source is None or target is None or target.ready_replicas == 0:
            continue
        reason = spill_reason(source, list(rule.when))
        before = (previous or {}).get(rule.from_)
        held = (
            before is not None
            and before.to == rule.to
            and before.reason == "Saturated"
            and now - before.since < SPILL_HOLD_SECONDS
        )
        if reason is not None:
            since = before.since if before is not None and before.to == rule.to else now
            out[rule.from_] = Spill(to=rule.to, reason=reason, since=since)
        elif held and before is not None:
            out[rule.from_] = before
    return out


def route_desired(
    route: ReasoningRoute,
    dmds: Mapping[str, Mapping[str, Any]],
    *,
    options: RouteRenderOptions,
    previous_spills: Mapping[str, Spill] | None = None,
    now: float = 0.0,
) -> RouteDesired:
    """Children, status, conditions and events for ``route``; ``dmds`` holds the bodies
    of the DMDs in its namespace by name (those it names, at least)."""
    generation = route.metadata.get("generation")
    views = {
        t.name: TierView.of(dmds[t.deployment]) for t in route.spec.tiers if t.deployment in dmds
    }
    missing = [t for t in route.spec.tiers if t.name not in views]
    spills = decide_spills(route, views, previous_spills, now)
    serving_to = {tier: spill.to for tier, spill in spills.items()}
    reasons = {tier: spill.reason for tier, spill in spills.items()}
    # A missing DMD renders as vLLM on one node: its pool selects nothing until the DMD
    # exists, and then the route is rendered again from it.
    backends = {
        t.name: TierBackend(
            engine=views[t.name].engine if t.name in views else "vllm",
            multi_node=views[t.name].multi_node if t.name in views else False,
        )
        for t in route.spec.tiers
    }
    conditions: list[ConditionState] = []
    try:
        rendered = render_route(route, backends, serving_to=serving_to, options=options)
    except RouteRenderError as exc:
        rendered = RenderedRoute()
        conditions.append(
            condition(READY, False, "InvalidRoute", f"{exc}: fix the route's spec", generation)
        )
    tiers = [
        TierStatus(
            name=t.name,
            deployment=t.deployment,
            pool=rendered.backends.get(t.name) if options.inference_extension else None,
            replicas=views[t.name].replicas if t.name in views else 0,
            ready_replicas=views[t.name].ready_replicas if t.name in views else 0,
            cost_per_hour=round(views[t.name].cost_per_hour, 4) if t.name in views else 0.0,
            serving_to=serving_to.get(t.name, t.name),
            spill_reason=reasons.get(t.name),
        )
        for t in route.spec.tiers
    ]
    cost = round(sum(t.cost_per_hour for t in tiers), 4)
    if options.inference_extension:
        conditions.append(
            condition(
                INFERENCE_EXTENSION,
                True,
                "InferencePoolsRendered",
                "each tier is an InferencePool with its endpoint picker",
                generation,
            )
        )
    else:
        services = ", ".join(
            f"{t.deployment}.{route.namespace}.svc:{PORT}" for t in route.spec.tiers
        )
        conditions.append(
            condition(
                INFERENCE_EXTENSION,
                False,
                "InferenceExtensionAbsent",
                "the Gateway API Inference Extension is not installed (no InferencePool "
                "inference.networking.k8s.io/v1): no endpoint picker, priorities or "
                f"hold-at-zero; each tier serves on its own Service: {services}",
                generation,
            )
        )
    if not any(c.type == READY for c in conditions):
        conditions.append(_ready(route, tiers, missing_names=[t.name for t in missing], cost=cost))
    conditions.append(_routed(route, options, generation))
    events = _spill_events(route, spills, previous_spills)
    status = ReasoningRouteStatus(
        observed_generation=generation,
        backend="InferencePool" if options.inference_extension else "Service",
        tiers=tiers,
        cost_per_hour=cost,
        summary=" ".join(
            f"{t.name}:{t.ready_replicas}/{t.replicas}"
            + (f"->{t.serving_to}" if t.serving_to != t.name else "")
            for t in tiers
        ),
    ).to_wire()
    # Conditions are merged with the recorded ones by the controller (transition times).
    status.pop("conditions", None)
    return RouteDesired(
        objects=rendered.objects,
        status=status,
        conditions=conditions,
        events=events,
        spills=spills,
    )


def _ready(
    route: ReasoningRoute, tiers: list[TierStatus], *, missing_names: list[str], cost: float
) -> ConditionState:
    generation = route.metadata.get("generation")
    by_name = {t.name: t for t in tiers}
    if missing_names:
        named = ", ".join(f"{n} ({by_name[n].deployment})" for n in missing_names)
        return condition(
            READY,
            False,
            "TierDeploymentMissing",
            f"no DistilledModelDeployment for tiers {named} in namespace {route.namespace}: "
            "create it, or fix tiers[].deployment",
            generation,
        )
    unserved = [t.name for t in tiers if by_name[t.serving_to].ready_replicas == 0]
    if unserved:
        return condition(
            READY,
            False,
            "TierNotServing",
            f"tiers {', '.join(unserved)} have no ready replica and nothing to spill to: "
            "their requests wait (held by the endpoint picker) until a replica is ready",
            generation,
        )
    budget = route.spec.budget
    if budget is not None and cost > budget.max_cost_per_hour:
        return condition(
            READY,
            True,
            "OverBudget",
            f"every tier serves; the tiers cost {cost:g}/h together, over the shared "
            f"budget of {budget.max_cost_per_hour:g}/h",
            generation,
        )
    return condition(READY, True, "Serving", "every tier serves", generation)


def _routed(
    route: ReasoningRoute, options: RouteRenderOptions, generation: int | None
) -> ConditionState:
    if route.spec.gateway is None:
        return condition(
            ROUTED,
            False,
            "NoGateway",
            "spec.gateway is not set: no HTTPRoute; point a gateway at the tiers' "
            "InferencePools yourself, or set spec.gateway.parentRefs",
            generation,
        )
    if not options.gateway_api:
        return condition(
            ROUTED,
            False,
            "GatewayAPIAbsent",
            "the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) is not installed: no "
            "HTTPRoute; clients reach each tier directly",
            generation,
        )
    return condition(
        ROUTED, True, "HTTPRouteRendered", f"HTTPRoute {route.name} routes by model", generation
    )


def _spill_events(
    route: ReasoningRoute,
    spills: Mapping[str, Spill],
    previous: Mapping[str, Spill] | None,
) -> list[Event]:
    if previous is None:  # first sight since the operator started: no transition known
        return []
    out = []
    for tier in route.spec.tiers:
        before, now = previous.get(tier.name), spills.get(tier.name)
        if (before.to if before else None) == (now.to if now else None):
            continue
        if now is not None:
            out.append(
                Event(
                    type="Normal",
                    reason="Spilling",
                    message=f"tier {tier.name} ({now.reason}): its requests go to tier {now.to}",
                )
            )
        else:
            out.append(
                Event(
                    type="Normal",
                    reason="SpillEnded",
                    message=f"tier {tier.name} serves its own requests again",
                )
            )
    return out


# ---- what the autoscaler takes from the routes -------------------------------------


def demand_queries(
    dmds: list[Mapping[str, Any]], routes: list[Mapping[str, Any]]
) -> dict[tuple[str, str], str]:
    """Per DMD (namespace, name), the PromQL of its demand outside its pods: its
    ``scaling.demandQuery``, else the flow-control queue of the endpoint picker of a
    route on the Inference Extension it is a tier of."""
    tier_of: dict[tuple[str, str], str] = {}
    for route in routes:
        if (route.get("status") or {}).get("backend") != "InferencePool":
            continue  # no picker, no queue
        ns, name = object_key(route)
        for tier in (route.get("spec") or {}).get("tiers") or []:
            tier_of[(ns, str(tier.get("deployment")))] = picker_queue_query(
                ns, name, str(tier.get("name"))
            )
    out: dict[tuple[str, str], str] = {}
    for body in dmds:
        key = object_key(body)
        explicit = ((body.get("spec") or {}).get("scaling") or {}).get("demandQuery")
        query = explicit or tier_of.get(key)
        if query:
            out[key] = str(query)
    return out


def shared_budgets(routes: list[Mapping[str, Any]]) -> dict[tuple[str, str], SharedBudget]:
    """Per DMD, the budget it shares with the other tiers of its route (routes with
    ``spec.budget``). A DMD in two budgeted routes takes the first by name."""
    out: dict[tuple[str, str], SharedBudget] = {}
    ordered = sorted(routes, key=lambda r: str((r.get("metadata") or {}).get("name")))
    for route in ordered:
        meta, spec = route.get("metadata") or {}, route.get("spec") or {}
        limit = (spec.get("budget") or {}).get("maxCostPerHour")
        if not limit:
            continue
        ns = str(meta.get("namespace"))
        members = tuple((ns, str(t.get("deployment"))) for t in spec.get("tiers") or [])
        budget = SharedBudget(
            name=f"route {meta.get('name')}'s shared budget",
            max_cost_per_hour=float(limit),
            members=members,
        )
        for key in members:
            out.setdefault(key, budget)
    return out
