"""Rollouts on the real control plane, analysed from real Prometheus scraping a test
exporter that serves vLLM's request counters and TTFT histogram per pod.

- a healthy canary goes through every step and is promoted;
- a canary with bad latency is rolled back on its own;
- an operator SIGKILLed mid-step resumes at the same step;
- a rolling update on GPUs that are all taken still completes (one at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest
from kubernetes import client

from distillery.api.types import GROUP, PLURAL, VERSION
from localcluster import Cluster
from localprom import Prometheus
from tests.argocd import health
from tests.integration.fake_engine import RequestTraffic, serve
from tests.integration.operator_process import OperatorProcess
from tests.integration.waits import Bounds, Dmds
from tests.support.dmds import dmd_yaml

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

NAME = "r1"
DATA = Path(__file__).resolve().parents[1] / "data"


def dmd_spec(revision: str, steps: list[dict[str, int]], replicas: int = 4) -> dict[str, Any]:
    return {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "revision": revision},
        "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
        # Replicas fixed for the test: the split, not the autoscaler, is under test here.
        "scaling": {"mode": "external", "minReplicas": replicas, "maxReplicas": replicas},
        "rollout": {
            "strategy": "Canary",
            "canary": {
                "steps": steps,
                "analysis": {"maxTTFTRatio": 1.5, "minRequests": 5},
            },
        },
    }


def apply(cluster: Cluster, ns: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=dmd_yaml(NAME, spec))


def get(api: client.ApiClient, ns: str) -> dict[str, Any]:
    obj = cast(
        dict[str, Any],
        client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME),
    )
    return obj


def rollout(api: client.ApiClient, ns: str) -> dict[str, Any]:
    return dict((get(api, ns).get("status") or {}).get("rollout") or {})


def stable_on(api: client.ApiClient, ns: str, revision: str) -> bool:
    """The rollout is over and the stable Deployment runs ``revision``."""
    status = rollout(api, ns)
    return status.get("phase") == "Stable" and status.get("stableRevision") == revision


def condition(api: client.ApiClient, ns: str, type_: str) -> dict[str, Any]:
    conds = (get(api, ns).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), {})


def deployment(api: client.ApiClient, ns: str, name: str) -> client.V1Deployment | None:
    try:
        return client.AppsV1Api(api).read_namespaced_deployment(name, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def revision_of(dep: client.V1Deployment | None) -> str | None:
    return None if dep is None else (dep.metadata.annotations or {}).get("distillery.dev/revision")


def event_reasons(api: client.ApiClient, ns: str) -> list[str]:
    items = client.CoreV1Api(api).list_namespaced_event(ns).items
    items = [e for e in items if e.involved_object.kind == "DistilledModelDeployment"]
    items.sort(key=lambda e: str(e.last_timestamp or e.metadata.creation_timestamp))
    return [str(e.reason) for e in items]


@pytest.fixture(scope="session")
def gateway_api(cluster: Cluster) -> None:
    """The Gateway API (its release's CRDs), installed before the operators of the tests
    that need it start."""
    cluster.install_gateway_api()


class Traffic(NamedTuple):
    """Requests to both tracks (their TTFTs and errors set by the test), and the
    operator reading them through Prometheus."""

    load: RequestTraffic
    op: OperatorProcess


@pytest.fixture
def traffic(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    crd_installed: None,
    prometheus: Callable[..., Prometheus],
    tmp_path: Path,
) -> Iterator[Traffic]:
    with (
        RequestTraffic(client.CoreV1Api(api_client), namespace) as load,
        serve(load.exposition) as port,
    ):
        prom = prometheus(static_targets=[f"127.0.0.1:{port}"], honor_labels=True)
        op = OperatorProcess(
            cluster, namespace, tmp_path / "op",
            "--prometheus-url", prom.url, "--rollout-interval", "1",
        ).start()  # fmt: skip
        try:
            yield Traffic(load, op)
        finally:
            op.stop()


def wait(api: client.ApiClient, ns: str, check: Callable[[], Any], what: str, within: float) -> Any:
    """Wait on the rollout; on timeout, say what the DMD's status last showed."""
    return Dmds(api, ns).wait(NAME, check, what, within)


def deploy_v1(
    cluster: Cluster, api: client.ApiClient, ns: str, spec: dict[str, Any], bounds: Bounds
) -> str:
    apply(cluster, ns, spec)
    Dmds(api, ns).wait_condition(NAME, "Ready", bounds.ready)
    wait(
        api,
        ns,
        lambda: rollout(api, ns).get("phase") == "Stable",
        "rollout Stable",
        bounds.reconcile,
    )
    v1 = rollout(api, ns)["stableRevision"]
    assert revision_of(deployment(api, ns, NAME)) == v1
    return str(v1)


def rolled_back(
    cluster: Cluster, api: client.ApiClient, ns: str, bounds: Bounds, revision: str
) -> tuple[str, dict[str, Any]]:
    """v1 deployed, then ``revision`` as a canary with 30 s pauses: the automatic
    rollback within the first pause. Returns v1 and status.rollout then."""
    steps = [{"weight": 25, "pauseSeconds": 30}, {"weight": 50, "pauseSeconds": 30}]
    v1 = deploy_v1(cluster, api, ns, dmd_spec("v1", steps), bounds)
    apply(cluster, ns, dmd_spec(revision, steps))
    ro = wait(
        api,
        ns,
        lambda: (r := rollout(api, ns)).get("phase") == "RolledBack" and r,
        "automatic rollback",
        bounds.rollout(30),
    )
    return v1, ro


def wait_canary_gone(api: client.ApiClient, ns: str, bounds: Bounds) -> None:
    wait(
        api,
        ns,
        lambda: deployment(api, ns, f"{NAME}-canary") is None,
        "canary gone",
        bounds.reconcile,
    )


def test_healthy_canary_is_promoted_through_every_step(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    traffic: Traffic,
) -> None:
    bounds = traffic.op.bounds
    steps = [{"weight": 25, "pauseSeconds": 6}, {"weight": 50, "pauseSeconds": 6}]
    v1 = deploy_v1(cluster, api_client, namespace, dmd_spec("v1", steps), bounds)
    apply(cluster, namespace, dmd_spec("v2", steps))

    # Step 1: a second Deployment runs the new revision, the stable one keeps v1.
    ro = wait(
        api_client,
        namespace,
        lambda: (r := rollout(api_client, namespace)).get("stepStartedAt") and r,
        "step 1",
        bounds.reconcile,
    )
    v2 = ro["canaryRevision"]
    assert v2 != v1 and ro["step"] == 1 and ro["stableRevision"] == v1
    stable = deployment(api_client, namespace, NAME)
    canary = deployment(api_client, namespace, f"{NAME}-canary")
    assert revision_of(stable) == v1 and revision_of(canary) == v2
    assert (stable.spec.replicas, canary.spec.replicas) == (3, 1)
    assert condition(api_client, namespace, "RolloutProgressing")["status"] == "True"
    service = client.CoreV1Api(api_client).read_namespaced_service(NAME, namespace)
    canary_labels = canary.spec.template.metadata.labels
    assert all(canary_labels[k] == v for k, v in service.spec.selector.items())
    wide = cluster.kubectl("get", "-n", namespace, f"dmd/{NAME}", "-o", "wide")
    assert "Progressing" in wide
    # What Argo CD shows for the live object while the canary runs.
    assert health(get(api_client, namespace))["status"] == "Progressing"

    # Step 2 after a passing analysis of step 1.
    ro = wait(
        api_client,
        namespace,
        lambda: (r := rollout(api_client, namespace)).get("step") == 2 and r,
        "step 2",
        bounds.rollout(6),
    )
    first = ro["lastAnalysis"]
    assert first["step"] == 1 and first["result"] == "Pass", first
    assert first["canaryRequests"] >= 5 and first["canaryTTFTSeconds"] < 0.5
    wait(
        api_client,
        namespace,
        lambda: deployment(api_client, namespace, f"{NAME}-canary").spec.replicas == 2,
        "canary at 2 of 4",
        bounds.reconcile,
    )

    # Promoted: the stable Deployment runs v2 and the canary is gone.
    wait(
        api_client,
        namespace,
        lambda: stable_on(api_client, namespace, v2),
        "promotion",
        bounds.rollout(6, 0),
    )
    wait(
        api_client,
        namespace,
        lambda: deployment(api_client, namespace, f"{NAME}-canary") is None,
        "canary gone",
        bounds.reconcile,
    )
    stable = deployment(api_client, namespace, NAME)
    assert revision_of(stable) == v2 and stable.spec.replicas == 4
    Dmds(api_client, namespace).wait_condition(NAME, "Ready", bounds.ready)
    assert health(get(api_client, namespace))["status"] == "Healthy"
    reasons = event_reasons(api_client, namespace)
    assert reasons.count("CanaryStepPassed") == 2, reasons
    assert reasons.index("RolloutStarted") < reasons.index("Promoting") < reasons.index("Promoted")


def test_canary_with_bad_latency_is_rolled_back(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    traffic: Traffic,
) -> None:
    load, op, bounds = traffic.load, traffic.op, traffic.op.bounds
    load.ttft["canary"] = 3.0  # fifteen times the stable track's 0.2 s
    # Within the first pause: enough canary requests to judge, then an analysis.
    v1, ro = rolled_back(cluster, api_client, namespace, bounds, "v2-slow")
    analysis = ro["lastAnalysis"]
    assert analysis["result"] == "Fail" and analysis["canaryTTFTSeconds"] > 1.0
    assert analysis["stableTTFTSeconds"] < 0.5
    # Within the first pause: the analysis failed it early.
    assert ro["stableRevision"] == v1 and "maxTTFTRatio" in ro["message"]
    wait_canary_gone(api_client, namespace, bounds)
    stable = deployment(api_client, namespace, NAME)
    assert revision_of(stable) == v1
    wait(
        api_client,
        namespace,
        lambda: deployment(api_client, namespace, NAME).spec.replicas == 4,
        "stable back to 4",
        bounds.reconcile,
    )
    stalled = condition(api_client, namespace, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "RolledBack"
    assert condition(api_client, namespace, "RolloutProgressing")["reason"] == "RolledBack"
    assert "RolledBack" in event_reasons(api_client, namespace)
    assert health(get(api_client, namespace))["status"] == "Degraded"
    # And it stays so: no retry loop, the stable Deployment is left alone.
    time.sleep(5 * op.settings.rollout_interval_seconds)
    assert rollout(api_client, namespace)["phase"] == "RolledBack"
    assert revision_of(deployment(api_client, namespace, NAME)) == v1
    assert deployment(api_client, namespace, f"{NAME}-canary") is None

    # A person retries after fixing the cause: the canary starts again at step 1.
    load.ttft["canary"] = 0.2
    cluster.kubectl(
        "annotate", "-n", namespace, f"dmd/{NAME}", "distillery.dev/rollout=retry", "--overwrite"
    )
    wait(
        api_client,
        namespace,
        lambda: rollout(api_client, namespace).get("phase") == "Progressing",
        "retry",
        bounds.reconcile,
    )
    wait(
        api_client,
        namespace,
        lambda: (
            "distillery.dev/rollout"
            not in (get(api_client, namespace)["metadata"].get("annotations") or {})
        ),
        "the command annotation consumed",
        bounds.reconcile,
    )


@pytest.mark.parametrize(
    ("case", "stable_ttft", "canary_ttft", "canary_errors", "verdict_names"),
    [
        # vLLM has no bucket boundary between 1.0 and 2.5 s: only the histogram's _sum
        # tells the canary's 2.1 s from the stable's 1.9 s across the 2 s SLO.
        ("across-the-slo", 1.9, 2.1, 0.0, "TTFT SLO"),
        # vLLM counts no HTTP error in request_success_total: the API server's 5xx do.
        ("server-errors", 0.2, 0.2, 0.2, "HTTP 5xx responses"),
    ],
)
def test_canary_is_rolled_back_on_what_vllm_really_exports(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    traffic: Traffic,
    case: str,
    stable_ttft: float,
    canary_ttft: float,
    canary_errors: float,
    verdict_names: str,
) -> None:
    load, bounds = traffic.load, traffic.op.bounds
    load.ttft.update(stable=stable_ttft, canary=canary_ttft)
    load.errors["canary"] = canary_errors
    v1, ro = rolled_back(cluster, api_client, namespace, bounds, f"v2-{case}")
    analysis = ro["lastAnalysis"]
    assert analysis["result"] == "Fail" and verdict_names in analysis["message"], analysis
    assert ro["stableRevision"] == v1
    if canary_errors:
        assert analysis["canaryErrorRate"] > 0.1 and analysis.get("stableErrorRate", 0) == 0
    else:
        # Interpolation reads both tracks as p95 ~2.4 s; the bounds tell them apart.
        assert analysis["canaryAboveSLO"] >= 0.15 and analysis["stableAboveSLO"] == 0
    wait_canary_gone(api_client, namespace, bounds)
    assert revision_of(deployment(api_client, namespace, NAME)) == v1


def test_operator_killed_mid_rollout_resumes_at_the_same_step(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    traffic: Traffic,
) -> None:
    op, bounds = traffic.op, traffic.op.bounds
    steps = [{"weight": 25, "pauseSeconds": 6}, {"weight": 50, "pauseSeconds": 25}]
    deploy_v1(cluster, api_client, namespace, dmd_spec("v1", steps), bounds)
    apply(cluster, namespace, dmd_spec("v2", steps))
    ro = wait(
        api_client,
        namespace,
        lambda: (
            (r := rollout(api_client, namespace)).get("step") == 2 and r.get("stepStartedAt") and r
        ),
        "step 2 started",
        bounds.rollout(6, 0),
    )
    canary_uid = deployment(api_client, namespace, f"{NAME}-canary").metadata.uid
    op.kill()
    time.sleep(3)
    op.start()
    time.sleep(5 * op.settings.rollout_interval_seconds)  # five rollout ticks
    after = rollout(api_client, namespace)
    # Each operator's rollout transitions, for a failure's message.
    history = "\n".join(
        f"{log.name}: {line}"
        for log in sorted(op.workdir.glob("operator-*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if "rollout of" in line or "Signal" in line
    )
    assert after["phase"] == "Progressing", history
    assert (after["step"], after["stepStartedAt"]) == (ro["step"], ro["stepStartedAt"]), history
    assert deployment(api_client, namespace, f"{NAME}-canary").metadata.uid == canary_uid
    wait(
        api_client,
        namespace,
        lambda: rollout(api_client, namespace).get("phase") == "Stable",
        "promotion after the restart",
        bounds.rollout(25),
    )
    # Step 1 passed once: the restart did not run it again.
    assert event_reasons(api_client, namespace).count("CanaryStepPassed") == 2


def free_l4_gpus(api: client.ApiClient) -> int:
    core = client.CoreV1Api(api)
    nodes = core.list_node(label_selector="nvidia.com/gpu.product=NVIDIA-L4").items
    free = 0
    for node in nodes:
        total = int(node.status.allocatable.get("nvidia.com/gpu", "0"))
        pods = core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node.metadata.name}"
        ).items
        taken: list[int] = [
            int(str((c.resources.limits or {}).get("nvidia.com/gpu", "0")))
            for p in pods
            if str(p.status.phase) not in ("Succeeded", "Failed")
            for c in p.spec.containers
        ]
        used = sum(taken)
        free += max(0, total - used)
    return free


def test_rolling_update_without_spare_gpus_completes(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    traffic: Traffic,
) -> None:
    replicas = free_l4_gpus(api_client)
    assert replicas >= 2, "the local cluster should have at least two free L4 GPUs"
    spec = {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "revision": "v1"},
        "placement": {"gpuTypes": ["nvidia-l4"], "gpusPerReplica": 1},
        "scaling": {"mode": "external", "minReplicas": replicas, "maxReplicas": replicas},
    }
    bounds = traffic.op.bounds
    apply(cluster, namespace, spec)
    Dmds(api_client, namespace).wait_condition(NAME, "Ready", bounds.ready)
    assert free_l4_gpus(api_client) == 0  # every L4 GPU is taken: no room for a surge pod
    apply(
        cluster,
        namespace,
        {**spec, "model": {**cast(dict[str, Any], spec["model"]), "revision": "v2"}},
    )
    v2 = wait(
        api_client,
        namespace,
        lambda: (
            (r := rollout(api_client, namespace)).get("phase") == "Progressing"
            and r["canaryRevision"]
        ),
        "rolling update started",
        bounds.reconcile,
    )
    # One pod at a time: each is replaced, started and seen ready before the next.
    wait(
        api_client,
        namespace,
        lambda: stable_on(api_client, namespace, v2),
        "rolling update complete",
        bounds.rollout(*[0] * replicas) + bounds.reconcile,
    )
    dep = deployment(api_client, namespace, NAME)
    assert dep.status.updated_replicas == replicas and dep.status.ready_replicas == replicas
    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace).items
    live = [p for p in pods if not p.metadata.deletion_timestamp]
    assert {p.metadata.labels["distillery.dev/revision"] for p in live} == {v2}
    reasons = event_reasons(api_client, namespace)
    assert "SurgeUnschedulable" in reasons and "RolloutComplete" in reasons
    # Back to a surge once done, for the next rollout on a cluster with room.
    wait(
        api_client,
        namespace,
        lambda: deployment(api_client, namespace, NAME).spec.strategy.rolling_update.max_surge == 1,
        "surge restored",
        bounds.reconcile,
    )


def route_weights(api: client.ApiClient, ns: str) -> tuple[int, int]:
    route = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", ns, "httproutes", NAME
    )
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [r["name"] for r in refs] == [f"{NAME}-stable", f"{NAME}-canary"]
    return int(refs[0]["weight"]), int(refs[1]["weight"])


@pytest.mark.usefixtures("gateway_api")
def test_httproute_weights_follow_the_steps(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    traffic: Traffic,
) -> None:
    op = traffic.op
    assert "http_route=True" in op.log.read_text()
    steps = [{"weight": 20, "pauseSeconds": 6}, {"weight": 60, "pauseSeconds": 6}]
    spec = dmd_spec("v1", steps)
    spec["rollout"]["canary"]["httpRoute"] = {
        "parentRefs": [{"name": "inference-gateway"}],
        "hostnames": ["r1.example.com"],
    }
    bounds = op.bounds
    deploy_v1(cluster, api_client, namespace, spec, bounds)
    assert route_weights(api_client, namespace) == (100, 0)
    assert rollout(api_client, namespace)["traffic"] == f"HTTPRoute {NAME}"
    core = client.CoreV1Api(api_client)
    assert core.read_namespaced_service(f"{NAME}-canary", namespace).spec.selector == {
        "distillery.dev/deployment": NAME,
        "distillery.dev/track": "canary",
    }
    spec["model"]["revision"] = "v2"
    apply(cluster, namespace, spec)
    # Exact weights, whatever the replica split (1 of 4 replicas is 25%, not 20%).
    wait(
        api_client,
        namespace,
        lambda: route_weights(api_client, namespace) == (80, 20),
        "20% by weight",
        bounds.reconcile,
    )
    ro = rollout(api_client, namespace)
    assert ro["step"] == 1
    v2 = ro["canaryRevision"]
    wait(
        api_client,
        namespace,
        lambda: route_weights(api_client, namespace) == (40, 60),
        "60% by weight",
        bounds.rollout(6),
    )
    wait(
        api_client,
        namespace,
        lambda: rollout(api_client, namespace).get("stableRevision") == v2,
        "promoted",
        bounds.rollout(6),
    )
    wait(
        api_client,
        namespace,
        lambda: route_weights(api_client, namespace) == (100, 0),
        "all traffic to stable",
        bounds.reconcile,
    )
