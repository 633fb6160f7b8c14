"""A ReasoningRoute's decision (spill, conditions, status) as a pure function, and the
route controller against the in-memory cluster: what it applies, prunes and writes."""

from __future__ import annotations

import asyncio
from typing import Any

from distillery.kube.route_controller import RouteReconciler, ServedApis
from distillery.reconcile.route import (
    SPILL_HOLD_SECONDS,
    Spill,
    TierView,
    decide_spills,
    route_desired,
)
from distillery.render.routing import RouteRenderOptions
from tests.support.fake_cluster import FakeCluster
from tests.support.routes import route

NS = "team"


def dmd_body(
    name: str, *, ready: int = 1, replicas: int = 1, limited: bool = False, cost: float = 2.0
) -> dict[str, Any]:
    conditions = [{"type": "ScalingLimited", "status": "True" if limited else "False"}]
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {"serving": {"engine": "vllm"}},
        "status": {
            "replicas": replicas,
            "readyReplicas": ready,
            "cost": {"currentPerHour": cost},
            "conditions": conditions,
        },
    }


SPILL = [{"from": "routine", "to": "hard", "when": ["Saturated", "AtZero"]}]


def conditions_of(desired: Any) -> dict[str, Any]:
    return {c.type: c for c in desired.conditions}


def test_a_tier_at_zero_spills_only_to_a_tier_that_serves() -> None:
    r = route(spill=SPILL)
    views = {
        "routine": TierView.of(dmd_body("r1-7b", ready=0, replicas=0)),
        "hard": TierView.of(dmd_body("r1-32b")),
    }
    assert decide_spills(r, views, now=5.0) == {
        "routine": Spill(to="hard", reason="AtZero", since=5.0)
    }
    views["hard"] = TierView.of(dmd_body("r1-32b", ready=0))
    assert decide_spills(r, views) == {}


def test_a_saturated_tier_spills_and_a_tier_without_a_spill_rule_never_does() -> None:
    views = {
        "routine": TierView.of(dmd_body("r1-7b", limited=True)),
        "hard": TierView.of(dmd_body("r1-32b")),
    }
    assert decide_spills(route(spill=SPILL), views)["routine"].reason == "Saturated"
    only_zero = [{**SPILL[0], "when": ["AtZero"]}]
    assert decide_spills(route(spill=only_zero), views) == {}
    assert decide_spills(route(), views) == {}


def test_a_spill_for_saturation_holds_though_the_load_it_moved_is_gone() -> None:
    """Spilling takes away the load that saturated the tier: its ScalingLimited clears
    at once. The spill holds for SPILL_HOLD_SECONDS so the route does not flip back and
    forth; a spill because the tier was at zero ends as soon as it serves."""
    r = route(spill=SPILL)
    calm = {"routine": TierView.of(dmd_body("r1-7b")), "hard": TierView.of(dmd_body("r1-32b"))}
    saturated = Spill(to="hard", reason="Saturated", since=1000.0)
    held = decide_spills(r, calm, {"routine": saturated}, now=1000.0 + SPILL_HOLD_SECONDS - 1)
    assert held == {"routine": saturated}
    assert decide_spills(r, calm, {"routine": saturated}, now=1000.0 + SPILL_HOLD_SECONDS) == {}
    at_zero = Spill(to="hard", reason="AtZero", since=1000.0)
    assert decide_spills(r, calm, {"routine": at_zero}, now=1001.0) == {}


def test_status_and_conditions_say_which_tier_serves_and_what_it_costs() -> None:
    dmds = {"r1-7b": dmd_body("r1-7b", ready=0, replicas=0, cost=0.0), "r1-32b": dmd_body("r1-32b")}
    desired = route_desired(route(spill=SPILL), dmds, options=RouteRenderOptions())
    tiers = {t["name"]: t for t in desired.status["tiers"]}
    assert tiers["routine"]["servingTo"] == "hard" and tiers["routine"]["spillReason"] == "AtZero"
    assert desired.status["costPerHour"] == 2.0 and desired.status["backend"] == "InferencePool"
    assert desired.status["summary"] == "routine:0/0->hard hard:1/1"
    cond = conditions_of(desired)
    assert cond["Ready"].status == "True" and cond["InferenceExtension"].status == "True"
    assert cond["Routed"].reason == "HTTPRouteRendered"


def test_a_missing_tier_dmd_is_named_in_ready_and_the_pools_are_still_rendered() -> None:
    desired = route_desired(route(), {"r1-7b": dmd_body("r1-7b")}, options=RouteRenderOptions())
    ready = conditions_of(desired)["Ready"]
    assert ready.status == "False" and ready.reason == "TierDeploymentMissing"
    assert "hard (r1-32b)" in ready.message
    assert len([o for o in desired.objects if o["kind"] == "InferencePool"]) == 2


def test_a_tier_with_nothing_to_serve_it_is_not_ready() -> None:
    dmds = {"r1-7b": dmd_body("r1-7b", ready=0), "r1-32b": dmd_body("r1-32b")}
    ready = conditions_of(route_desired(route(), dmds, options=RouteRenderOptions()))["Ready"]
    assert (ready.status, ready.reason) == ("False", "TierNotServing")
    assert "routine" in ready.message


def test_without_the_extension_the_condition_says_so_and_names_the_services() -> None:
    dmds = {"r1-7b": dmd_body("r1-7b"), "r1-32b": dmd_body("r1-32b")}
    desired = route_desired(route(), dmds, options=RouteRenderOptions(inference_extension=False))
    cond = conditions_of(desired)["InferenceExtension"]
    assert cond.status == "False" and cond.reason == "InferenceExtensionAbsent"
    assert "r1-7b.team.svc:8000" in cond.message
    assert desired.status["backend"] == "Service"
    assert [o["kind"] for o in desired.objects] == ["HTTPRoute"]


def test_over_the_shared_budget_is_said_in_ready() -> None:
    dmds = {"r1-7b": dmd_body("r1-7b", cost=30), "r1-32b": dmd_body("r1-32b", cost=20)}
    r = route(budget={"maxCostPerHour": 40})
    ready = conditions_of(route_desired(r, dmds, options=RouteRenderOptions()))["Ready"]
    assert ready.reason == "OverBudget" and "50/h" in ready.message


def route_body(**spec: Any) -> dict[str, Any]:
    r = route(**spec)
    body = r.model_dump(by_alias=True, exclude_none=True, mode="json")
    body["metadata"] = {"name": "r1", "namespace": NS, "uid": "u-1", "generation": 1}
    return body


def controller(cluster: FakeCluster, extension: bool = True) -> RouteReconciler:
    return RouteReconciler(
        kube=cluster,
        apis=ServedApis(gateway_api=lambda: True, inference_extension=lambda: extension),
        options=RouteRenderOptions(endpoint_picker_image="epp:test"),
    )


def test_the_controller_applies_once_writes_nothing_at_steady_state_and_prunes_a_tier() -> None:
    cluster = FakeCluster()
    routes = controller(cluster)
    dmds = {"r1-7b": dmd_body("r1-7b"), "r1-32b": dmd_body("r1-32b")}

    async def scenario() -> None:
        body = route_body()
        await routes.reconcile(body, dmds)
        kinds = sorted({kind for kind, _, _ in cluster.objects})
        assert kinds == [
            "Deployment",
            "HTTPRoute",
            "InferenceObjective",
            "InferencePool",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
        assert cluster.route_status[(NS, "r1")]["backend"] == "InferencePool"
        writes = len(cluster.writes())
        # The watch shows our status back: nothing more to write.
        body["status"] = cluster.route_status[(NS, "r1")]
        await routes.reconcile(body, dmds)
        assert len(cluster.writes()) == writes
        # The hard tier leaves the route: its pool, picker and objective go.
        smaller = route_body(tiers=[{"name": "routine", "deployment": "r1-7b"}], rules=[], spill=[])
        smaller["status"] = body["status"]
        await routes.reconcile(smaller, dmds)
        left = {(kind, name) for kind, _, name in cluster.objects}
        assert ("InferencePool", "r1-hard") not in left
        assert ("Deployment", "r1-hard-epp") not in left
        assert ("InferencePool", "r1-routine") in left

    asyncio.run(scenario())


def test_a_restarted_controller_prunes_what_was_removed_while_it_was_down() -> None:
    """A new process knows nothing it applied; it lists the route's children, so the
    hard tier removed (and the gateway dropped) while no operator ran still go, and
    another route's children stay."""
    cluster = FakeCluster()
    dmds = {"r1-7b": dmd_body("r1-7b"), "r1-32b": dmd_body("r1-32b")}
    other = route_body()
    other["metadata"] = {**other["metadata"], "name": "r2", "uid": "u-2"}

    async def scenario() -> None:
        await controller(cluster).reconcile(route_body(), dmds)
        await controller(cluster).reconcile(other, dmds)
        assert ("HTTPRoute", NS, "r1") in cluster.objects
        # Edited while down: one tier, no gateway.
        smaller = route_body(tiers=[{"name": "routine", "deployment": "r1-7b"}], rules=[], spill=[])
        del smaller["spec"]["gateway"]
        restarted = controller(cluster)
        await restarted.reconcile(smaller, dmds)
        left = {(kind, name) for kind, _, name in cluster.objects}
        assert ("InferencePool", "r1-hard") not in left
        assert ("Role", "r1-hard-epp") not in left
        assert ("HTTPRoute", "r1") not in left
        assert ("InferencePool", "r1-routine") in left
        assert {("InferencePool", "r2-hard"), ("HTTPRoute", "r2")} <= left
        # Listed once per route per process (the first and the restarted), not per
        # reconcile.
        await restarted.reconcile(smaller, dmds)
        assert cluster.calls.count(("list_route_children", "r1")) == 2

    asyncio.run(scenario())


def test_a_spill_rewrites_the_http_route_and_posts_an_event_each_way() -> None:
    cluster = FakeCluster()
    routes = controller(cluster)

    async def scenario() -> None:
        body = route_body(spill=SPILL)
        up = {"r1-7b": dmd_body("r1-7b"), "r1-32b": dmd_body("r1-32b")}
        await routes.reconcile(body, up)
        assert not cluster.events  # first sight: no transition known
        down = {**up, "r1-7b": dmd_body("r1-7b", ready=0, replicas=0)}
        await routes.reconcile(body, down)
        http = cluster.objects[("HTTPRoute", NS, "r1")]
        assert http["spec"]["rules"][-1]["backendRefs"][0]["name"] == "r1-hard"
        await routes.reconcile(body, up)
        http = cluster.objects[("HTTPRoute", NS, "r1")]
        assert http["spec"]["rules"][-1]["backendRefs"][0]["name"] == "r1-routine"
        assert [reason for _, reason, _ in cluster.events] == ["Spilling", "SpillEnded"]

    asyncio.run(scenario())


def test_installing_the_extension_is_noticed_without_a_restart() -> None:
    cluster = FakeCluster()
    served = {"extension": False}
    routes = RouteReconciler(
        kube=cluster,
        apis=ServedApis(
            gateway_api=lambda: True,
            inference_extension=lambda: served["extension"],
            ttl_seconds=0.0,
        ),
        options=RouteRenderOptions(endpoint_picker_image="epp:test"),
    )
    dmds = {"r1-7b": dmd_body("r1-7b"), "r1-32b": dmd_body("r1-32b")}

    async def scenario() -> None:
        await routes.reconcile(route_body(), dmds)
        assert cluster.route_status[(NS, "r1")]["backend"] == "Service"
        served["extension"] = True
        await routes.reconcile(route_body(), dmds)
        assert cluster.route_status[(NS, "r1")]["backend"] == "InferencePool"
        assert ("InferencePool", NS, "r1-routine") in cluster.objects

    asyncio.run(scenario())
