"""End to end through a ReasoningRoute: real control plane, real Prometheus, the Gateway
API and Inference Extension CRDs, the emulated fleet's front door routing by the
HTTPRoutes and InferencePools the operator wrote, and the operator scaling.

- The hard signal (``x-reasoning-effort: high``) reaches only the hard tier; the rest
  reaches the routine tier; every answer names its tier.
- A tier at zero replicas: its requests are held at the router, the held count reaches
  Prometheus as the picker's flow-control queue, the autoscaler wakes the tier, and
  every held request is answered after the cold start.
- Routine overflow (its maxReplicas reached) spills to the hard tier, and the answers
  say so; the route's shared budget caps the hard tier's scale-up (ScalingLimited says
  which budget).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.render.routing import SPILLED_FROM_HEADER, TIER_HEADER
from localcluster import Cluster
from tests.integration.closed_loop import Loop
from tests.integration.test_routing import describe_route, route_status
from tests.integration.waits import Dmds, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.prometheus]
ROOT = Path(__file__).resolve().parents[2]
STARTUP = 3  # seconds of cold start (wall), as a compressed DMD sets it


def tier_spec(model: str, gpu: str, *, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "model": {"name": model},
        "serving": {"maxConcurrency": 8},
        "placement": {"gpuTypes": [gpu]},
        "scaling": {
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "startupSeconds": STARTUP,
            # Long enough that nothing scales down while the test runs.
            "scaleDown": {"stabilizationSeconds": 600},
        },
    }


def routes(namespace: str) -> list[dict[str, Any]]:
    gateway = {"parentRefs": [{"name": "inference-gateway"}]}
    return [
        {
            "apiVersion": "distillery.dev/v1alpha1",
            "kind": "ReasoningRoute",
            "metadata": {"name": "r1"},
            "spec": {
                "model": "deepseek-r1",
                "tiers": [
                    {"name": "routine", "deployment": "r7b", "priority": 0},
                    {"name": "hard", "deployment": "r32b", "priority": 10},
                ],
                "defaultTier": "routine",
                "rules": [
                    {"tier": "hard", "header": {"name": "x-reasoning-effort", "values": ["high"]}}
                ],
                "spill": [{"from": "routine", "to": "hard", "when": ["Saturated"]}],
                "gateway": gateway,
            },
        },
        {
            "apiVersion": "distillery.dev/v1alpha1",
            "kind": "ReasoningRoute",
            "metadata": {"name": "r1-math"},
            "spec": {
                "model": "deepseek-r1-math",
                "tiers": [{"name": "math", "deployment": "rmath"}],
                "defaultTier": "math",
                "gateway": gateway,
            },
        },
    ]


def ask(
    door: int, model: str, headers: dict[str, str] | None = None, tokens: int = 64
) -> tuple[int, dict[str, str]]:
    """One completion through the front door: its status and response headers."""
    body = json.dumps({"model": model, "prompt": "why is the sky blue", "max_tokens": tokens})
    req = urllib.request.Request(
        f"http://127.0.0.1:{door}/v1/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def limited(dmds: Dmds, name: str) -> dict[str, Any] | None:
    c = dmds.condition(name, "ScalingLimited")
    return c if c.get("status") == "True" else None


@pytest.mark.usefixtures("crd_installed", "inference_extension")
def test_routes_end_to_end_signal_hold_at_zero_spill_and_shared_budget(
    cluster: Cluster, namespace: str, loop: Loop, dmds: Dmds
) -> None:
    run_routes(loop, dmds, cluster, namespace)


def run_routes(loop: Loop, dmds: Dmds, cluster: Cluster, namespace: str) -> None:
    door, bounds, fleet_log = loop.door, loop.operator.bounds, loop.fleet_log
    dmds.apply(
        "r7b",
        tier_spec(
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-h100-80gb",
            min_replicas=1, max_replicas=1,
        ),
    )  # fmt: skip
    dmds.apply(
        "r32b",
        tier_spec(
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "nvidia-h100-80gb",
            min_replicas=1, max_replicas=4,
        ),
    )  # fmt: skip
    math = tier_spec(
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "nvidia-l4", min_replicas=0, max_replicas=2
    )
    # At zero it has no engine to report load: its demand is its picker's queue, which
    # the operator reads because the route names it (no demandQuery of its own).
    dmds.apply("rmath", math)
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(routes(namespace))
    )
    for name in ("r7b", "r32b"):
        dmds.wait_condition(name, "Ready", bounds.ready)

    def route_serves() -> bool:
        tiers = route_status(dmds, "r1").get("tiers") or []
        return len(tiers) == 2 and all(
            t["readyReplicas"] > 0 and t["servingTo"] == t["name"] for t in tiers
        )

    wait_for(route_serves, "route r1 serves on both tiers", bounds.ready,
             describe=lambda: describe_route(dmds, "r1"))  # fmt: skip
    # The front door reads the routes every second.
    wait_for(lambda: ask(door, "deepseek-r1")[0] == 200, "the front door routes r1",
             bounds.within(5.0), describe=lambda: fleet_log.read_text()[-2000:])  # fmt: skip

    # The hard signal reaches only the hard tier; the rest, only the routine one.
    with ThreadPoolExecutor(8) as pool:
        hard = list(
            pool.map(lambda _: ask(door, "deepseek-r1", {"x-reasoning-effort": "high"}), range(8))
        )
        routine = list(pool.map(lambda _: ask(door, "deepseek-r1"), range(8)))
    assert all(s == 200 and h[TIER_HEADER] == "hard" for s, h in hard), hard
    assert all(h["x-distillery-pod"].startswith("r32b-") for _, h in hard)
    assert all(s == 200 and h[TIER_HEADER] == "routine" for s, h in routine), routine
    assert all(h["x-distillery-pod"].startswith("r7b-") for _, h in routine)

    # A tier at zero: held at the router, woken by the queue, every request answered.
    assert dmds.replicas("rmath") == 0
    assert dmds.condition("rmath", "Ready")["reason"] == "ScaledToZero"
    with ThreadPoolExecutor(3) as pool:
        held = [pool.submit(ask, door, "deepseek-r1-math") for _ in range(3)]
        dmds.wait_replicas("rmath", lambda n: n >= 1, "scale from zero", bounds.scale_up)
        answers = [f.result(timeout=bounds.ready) for f in held]
    assert all(s == 200 for s, _ in answers), answers
    assert all(h[TIER_HEADER] == "math" and "x-distillery-held-seconds" in h for _, h in answers)
    decisions = dmds.get("rmath")["status"]["autoscaling"]["lastDecisions"]
    assert decisions[0]["reason"].startswith("scale from zero"), decisions

    # The tiers share a budget that pays for one replica of each.
    costs = {n: dmds.get(n)["status"]["cost"]["perReplicaHour"] for n in ("r7b", "r32b")}
    budget = round(costs["r7b"] + costs["r32b"] + 0.1, 2)
    cluster.kubectl(
        "patch", "reasoningroute", "r1", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"budget": {"maxCostPerHour": budget}}}),
    )  # fmt: skip

    # Routine overflow: 24 clients, each asking again once answered, three times the
    # 8 sequences its one replica runs at once.
    stop, statuses = threading.Event(), []

    def client_loop() -> None:
        while not stop.is_set():
            statuses.append(ask(door, "deepseek-r1", tokens=2000)[0])

    clients = [threading.Thread(target=client_loop, daemon=True) for _ in range(24)]
    for c in clients:
        c.start()
    wait_for(lambda: limited(dmds, "r7b"), "the routine tier at its limit", bounds.scale_up,
             describe=lambda: dmds.describe("r7b"))  # fmt: skip

    def spilling() -> bool:
        tiers = {t["name"]: t for t in route_status(dmds, "r1")["tiers"]}
        return bool(
            tiers["routine"]["servingTo"] == "hard"
            and tiers["routine"]["spillReason"] == "Saturated"
        )

    wait_for(spilling, "routine overflow spills to hard", bounds.reconcile,
             describe=lambda: describe_route(dmds, "r1"))  # fmt: skip

    def spilled_answer() -> dict[str, str] | None:
        status, headers = ask(door, "deepseek-r1")
        return headers if status == 200 and headers.get(SPILLED_FROM_HEADER) == "routine" else None

    answer = wait_for(spilled_answer, "an answer that says it spilled", bounds.within(5.0))
    assert answer[TIER_HEADER] == "hard" and answer["x-distillery-pod"].startswith("r32b-")

    # The hard tier takes the load, up to what the shared budget leaves it.
    capped = wait_for(
        lambda: (c := limited(dmds, "r32b")) and c.get("reason") == "BudgetLimited" and c,
        "the shared budget caps the hard tier",
        bounds.scale_up,
        describe=lambda: dmds.describe("r32b"),
    )
    assert "route r1's shared budget" in capped["message"], capped
    # Together: one routine replica (its maxReplicas) and what the budget leaves the
    # hard tier, one.
    assert [dmds.get(n)["status"]["replicas"] for n in ("r7b", "r32b")] == [1, 1]
    stop.set()
    for c in clients:
        c.join(timeout=bounds.within(120.0))
    assert statuses and all(s == 200 for s in statuses), [s for s in statuses if s != 200]
