"""ReasoningRoute: the API's rules, and the Gateway API Inference Extension objects a
route renders (pure: no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from distillery.api.crd import route_crd
from distillery.api.routing import ReasoningRoute
from distillery.render.routing import (
    MODEL_HEADER,
    OBJECTIVE_HEADER,
    SPILLED_FROM_HEADER,
    TIER_HEADER,
    RouteRenderError,
    RouteRenderOptions,
    TierBackend,
    child_name,
    render_route,
)
from tests.support.routes import route

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "routing" / "tiered-r1.yaml"


BACKENDS = {"routine": TierBackend(engine="vllm"), "hard": TierBackend(engine="vllm")}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_example_routes_validate() -> None:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    routes = [ReasoningRoute.model_validate(d) for d in docs]
    assert [r.name for r in routes] == ["deepseek-r1", "deepseek-r1-domains"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"defaultTier": "fast"}, "defaultTier must name one of tiers[].name"),
        (
            {"rules": [{"tier": "nope", "models": ["x"]}]},
            "rules[].tier must name one of tiers[].name",
        ),
        (
            {
                "tiers": [
                    {"name": "routine", "deployment": "a"},
                    {"name": "routine", "deployment": "b"},
                ]
            },
            "tiers[].name must be unique",
        ),
        (
            {
                "tiers": [
                    {"name": "routine", "deployment": "a"},
                    {"name": "hard", "deployment": "a"},
                ]
            },
            "tiers[].deployment must be unique",
        ),
        ({"spill": [{"from": "routine", "to": "routine"}]}, "two different tiers"),
        (
            {"spill": [{"from": "routine", "to": "hard"}, {"from": "routine", "to": "hard"}]},
            "spill[].from must be unique",
        ),
        (
            {
                "rules": [
                    {
                        "tier": "hard",
                        "models": ["x"],
                        "header": {"name": "x-e", "values": ["high"]},
                    }
                ]
            },
            "set one of header and models",
        ),
        ({"rules": [{"tier": "hard"}]}, "set one of header and models"),
    ],
)
def test_bad_routes_are_refused_with_the_rule_that_failed(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        route(**change)


def test_every_python_rule_is_a_cel_rule_of_the_crd() -> None:
    """The API server and `distillery render` refuse the same routes with one message."""
    schema = route_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    messages = {r["message"] for r in spec["x-kubernetes-validations"]}
    rule = spec["properties"]["rules"]["items"]
    messages |= {r["message"] for r in rule["x-kubernetes-validations"]}
    from distillery.api.routing import ReasoningRouteSpec, RouteRule

    assert {r.message for r in (*ReasoningRouteSpec.RULES, *RouteRule.RULES)} == messages


def test_each_tier_gets_a_pool_a_picker_and_an_objective() -> None:
    out = render_route(route(), BACKENDS, options=RouteRenderOptions(owner_uid="u1"))
    pools = by_kind(out.objects, "InferencePool")
    assert [p["metadata"]["name"] for p in pools] == ["r1-routine", "r1-hard"]
    routine = pools[0]["spec"]
    assert routine["selector"] == {"matchLabels": {"distillery.dev/deployment": "r1-7b"}}
    assert routine["targetPorts"] == [{"number": 8000}]
    assert routine["endpointPickerRef"]["name"] == "r1-routine-epp"
    objectives = {
        o["metadata"]["name"]: o["spec"] for o in by_kind(out.objects, "InferenceObjective")
    }
    assert objectives["r1-hard"]["priority"] > objectives["r1-routine"]["priority"]
    assert objectives["r1-hard"]["poolRef"]["name"] == "r1-hard"
    [picker] = [
        d for d in by_kind(out.objects, "Deployment") if d["metadata"]["name"] == "r1-routine-epp"
    ]
    args = picker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--pool-name") + 1] == "r1-routine"
    assert args[args.index("--pool-namespace") + 1] == "team"
    assert args[args.index("--total-queued-requests-metric") + 1] == "vllm:num_requests_waiting"
    # Every child is owned by the route, so deleting it deletes them.
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "u1" for o in out.objects)
    # The picker may read only what it needs, in its namespace.
    [role] = [r for r in by_kind(out.objects, "Role") if r["metadata"]["name"] == "r1-routine-epp"]
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}
    config = yaml.safe_load(args[args.index("--config-text") + 1])
    assert config["kind"] == "EndpointPickerConfig" and "flowControl" in config["featureGates"]


def test_the_picker_reads_each_engines_own_metrics() -> None:
    out = render_route(
        route(), {"routine": TierBackend(engine="sglang"), "hard": TierBackend(engine="tgi")}
    )
    args = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"]
        for d in by_kind(out.objects, "Deployment")
    }
    routine, hard = args["r1-routine-epp"], args["r1-hard-epp"]
    assert routine[routine.index("--total-queued-requests-metric") + 1] == "sglang:num_queue_reqs"
    assert hard[hard.index("--kv-cache-usage-percentage-metric") + 1] == ""


def test_a_multi_node_tier_pools_only_the_group_leaders() -> None:
    out = render_route(route(), {**BACKENDS, "hard": TierBackend(engine="vllm", multi_node=True)})
    pool = next(
        p for p in by_kind(out.objects, "InferencePool") if p["metadata"]["name"] == "r1-hard"
    )
    assert (
        pool["spec"]["selector"]["matchLabels"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    )


def headers(match: dict[str, Any]) -> dict[str, str]:
    return {h["name"]: h["value"] for h in match["headers"]}


def test_the_http_route_sends_the_hard_signal_to_the_hard_tier_and_the_rest_to_routine() -> None:
    r = route(aliases=["r1"], rules=[
        {"tier": "hard", "header": {"name": "x-reasoning-effort", "values": ["high"]}},
        {"tier": "hard", "models": ["deepseek-r1-hard"]},
    ])  # fmt: skip
    [http] = by_kind(render_route(r, BACKENDS).objects, "HTTPRoute")
    rules = http["spec"]["rules"]
    assert [headers(m) for m in rules[0]["matches"]] == [
        {MODEL_HEADER: "deepseek-r1", "x-reasoning-effort": "high"},
        {MODEL_HEADER: "r1", "x-reasoning-effort": "high"},
    ]
    assert [headers(m) for m in rules[1]["matches"]] == [{MODEL_HEADER: "deepseek-r1-hard"}]
    # The default rule is last: a request no rule matches goes to the default tier.
    assert [headers(m) for m in rules[2]["matches"]] == [
        {MODEL_HEADER: "deepseek-r1"},
        {MODEL_HEADER: "r1"},
    ]
    backends = [rule["backendRefs"][0] for rule in rules]
    assert [b["name"] for b in backends] == ["r1-hard", "r1-hard", "r1-routine"]
    assert all(b["kind"] == "InferencePool" for b in backends)
    default = {f["type"]: f for f in backends[2]["filters"]}
    assert default["RequestHeaderModifier"]["requestHeaderModifier"]["set"] == [
        {"name": OBJECTIVE_HEADER, "value": "r1-routine"}
    ]
    assert default["ResponseHeaderModifier"]["responseHeaderModifier"]["set"] == [
        {"name": TIER_HEADER, "value": "routine"}
    ]
    assert http["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}
    ]


def test_a_spill_points_the_tiers_rules_at_the_other_pool_and_says_so() -> None:
    r = route(spill=[{"from": "routine", "to": "hard"}])
    [http] = by_kind(render_route(r, BACKENDS, serving_to={"routine": "hard"}).objects, "HTTPRoute")
    default = http["spec"]["rules"][-1]["backendRefs"][0]
    assert default["name"] == "r1-hard"
    filters = {f["type"]: f for f in default["filters"]}
    assert filters["ResponseHeaderModifier"]["responseHeaderModifier"]["set"] == [
        {"name": TIER_HEADER, "value": "hard"},
        {"name": SPILLED_FROM_HEADER, "value": "routine"},
    ]
    # The objective follows the pool that answers (an objective belongs to one pool).
    assert filters["RequestHeaderModifier"]["requestHeaderModifier"]["set"][0]["value"] == "r1-hard"


def test_without_the_inference_extension_the_route_reaches_each_tiers_service() -> None:
    out = render_route(route(), BACKENDS, options=RouteRenderOptions(inference_extension=False))
    assert {o["kind"] for o in out.objects} == {"HTTPRoute"}
    backend = out.objects[0]["spec"]["rules"][-1]["backendRefs"][0]
    assert (backend["kind"], backend["name"], backend["port"]) == ("Service", "r1-7b", 8000)
    assert out.backends == {"routine": "r1-7b", "hard": "r1-32b"}


def test_without_a_gateway_no_http_route_is_rendered() -> None:
    out = render_route(route(gateway=None), BACKENDS)
    assert not by_kind(out.objects, "HTTPRoute") and by_kind(out.objects, "InferencePool")
    out = render_route(route(), BACKENDS, options=RouteRenderOptions(gateway_api=False))
    assert not by_kind(out.objects, "HTTPRoute")


def test_a_tier_without_its_dmd_is_an_error_that_names_it() -> None:
    with pytest.raises(RouteRenderError, match="tiers hard"):
        render_route(route(), {"routine": BACKENDS["routine"]})


def test_too_many_matches_for_an_http_route_are_refused_before_the_server_does() -> None:
    aliases = [f"a{i}" for i in range(8)]
    values = [f"v{i}" for i in range(8)]
    r = route(
        aliases=aliases, rules=[{"tier": "hard", "header": {"name": "x-e", "values": values}}]
    )
    with pytest.raises(RouteRenderError, match="81 matches"):
        render_route(r, BACKENDS)


def test_long_names_are_cut_to_a_dns_label_and_stay_unique() -> None:
    a, b = child_name("x" * 60, "routine", "epp"), child_name("x" * 60, "routinf", "epp")
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert child_name("r1", "hard", "epp") == "r1-hard-epp"


def test_the_emulated_front_door_routes_by_what_the_operator_rendered() -> None:
    """The fleet's front door (hack/fleet.py) reads the HTTPRoute and InferencePools the
    operator renders: the hard signal reaches the hard pool, the rest the routine one,
    a spilled route the other pool with its headers, another model nothing."""
    from fleet import pick, route_table

    def table(out: Any) -> Any:
        pools = {o["metadata"]["name"]: o for o in by_kind(out.objects, "InferencePool")}
        objectives = {
            o["metadata"]["name"]: o["spec"]["priority"]
            for o in by_kind(out.objects, "InferenceObjective")
        }
        return route_table(by_kind(out.objects, "HTTPRoute"), {"team": pools}, {"team": objectives})

    rules = table(render_route(route(aliases=["r1"]), BACKENDS))
    hard = pick(rules, {MODEL_HEADER.lower(): "r1", "x-reasoning-effort": "high"})
    assert hard is not None and (hard.dmd, hard.priority) == ("r1-32b", 10)
    assert dict(hard.response_headers) == {TIER_HEADER: "hard"}
    routine = pick(rules, {MODEL_HEADER.lower(): "deepseek-r1", "x-reasoning-effort": "low"})
    assert routine is not None and routine.dmd == "r1-7b" and routine.picker == "r1-routine-epp"
    assert pick(rules, {MODEL_HEADER.lower(): "other-model"}) is None
    spilled = table(
        render_route(
            route(spill=[{"from": "routine", "to": "hard"}]),
            BACKENDS,
            serving_to={"routine": "hard"},
        )
    )
    answer = pick(spilled, {MODEL_HEADER.lower(): "deepseek-r1"})
    assert answer is not None and answer.dmd == "r1-32b"
    assert dict(answer.response_headers) == {TIER_HEADER: "hard", SPILLED_FROM_HEADER: "routine"}
