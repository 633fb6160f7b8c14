"""ReasoningRoutes on the real control plane with the real Gateway API and Gateway API
Inference Extension CRDs, and the extension's endpoint picker built from its Go module.

The operator renders each tier's InferencePool, InferenceObjective and endpoint picker,
and each route's HTTPRoute; the API server validates every one against the releases'
schemas. The picker then runs on this machine exactly as the operator rendered it (its
arguments from the rendered Deployment, its identity the rendered ServiceAccount, so the
rendered Role is what lets it work) and must discover the pool's pods from the
InferencePool alone, and scrape their metrics at the pods' own addresses, which the
emulated fleet serves inside the cluster's pod network. A tier scaled to zero spills to
the other tier in the HTTPRoute and comes back when it serves again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from localcluster import ROOT, Cluster, background, fleet_argv, free_port, terminate
from tests.integration.operator_process import OperatorProcess
from tests.integration.waits import POD_START, Dmds, wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION = "distillery.dev", "v1alpha1"
EXAMPLES = ROOT / "examples"
EPP = ROOT / ".cache" / "bin" / "epp"
TIER_DMDS = (
    "deepseek-r1-distill-qwen-7b.yaml",
    "deepseek-r1-distill-qwen-32b.yaml",
    "deepseek-r1-distill-llama-8b.yaml",
    "deepseek-r1-distill-qwen-1.5b.yaml",
)


def custom(dmds: Dmds) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(dmds.api_client)


def route_status(dmds: Dmds, name: str) -> dict[str, Any]:
    obj = custom(dmds).get_namespaced_custom_object(
        GROUP, VERSION, dmds.namespace, "reasoningroutes", name
    )
    return dict(cast(dict[str, Any], obj).get("status") or {})


def describe_route(dmds: Dmds, name: str) -> str:
    status = route_status(dmds, name)
    lines = [f"reasoningroute/{name}: {status.get('summary')} backend={status.get('backend')}"]
    lines += [
        f"  {c['type']}={c['status']} {c.get('reason')}: {c.get('message')}"
        for c in status.get("conditions", [])
    ]
    return "\n".join(lines)


def ready_reason(dmds: Dmds, name: str) -> str | None:
    for c in route_status(dmds, name).get("conditions", []):
        if c["type"] == "Ready":
            return f"{c['status']}/{c['reason']}"
    return None


def pool_endpoints(metrics_port: int, pool: str) -> set[str]:
    """The pods the picker holds for ``pool``, from its own metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    pattern = re.compile(
        r'^inference_pool_per_pod_queue_size\{model_server_pod="([^"]+)",name="'
        + re.escape(pool)
        + r'"\}',
        re.M,
    )
    # The picker names an endpoint POD-rank-N (one per target port).
    return {re.sub(r"-rank-\d+$", "", m) for m in pattern.findall(text)}


@pytest.fixture
def picker_workdir(tmp_path: Path) -> Path:
    return tmp_path / "epp"


def start_picker(
    cluster: Cluster, dmds: Dmds, deployment: dict[str, Any], workdir: Path
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Run the picker binary as the operator rendered it, as its ServiceAccount."""
    if not EPP.is_file():
        raise AssertionError(f"{EPP} missing: run `hack/build-tools.sh gie` (make tools)")
    workdir.mkdir(parents=True, exist_ok=True)
    pod = deployment["spec"]["template"]["spec"]
    sa = pod["serviceAccountName"]
    token = cluster.kubectl("create", "token", sa, "-n", dmds.namespace, "--duration=1h").strip()
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority": str(cluster.state_dir / "pki" / "ca.crt"),
                        },
                    }
                ],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [{"name": sa, "context": {"cluster": "local", "user": sa}}],
                "current-context": sa,
            }
        )
    )
    metrics_port = free_port()
    args = list(pod["containers"][0]["args"])
    # Ports of this machine instead of the pod's (a later flag wins).
    args += ["--grpc-port", str(free_port()), "--grpc-health-port", str(free_port())]
    args += ["--metrics-port", str(metrics_port)]
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "NAMESPACE": dmds.namespace,
        "POD_NAME": f"{deployment['metadata']['name']}-local",
    }
    log = workdir / "epp.log"
    proc = background([str(EPP), *args], log, env=env)
    return proc, metrics_port, log


@pytest.fixture
def pickers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        terminate(proc, grace=10)


@pytest.fixture
def fleet(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The emulated fleet on the pods' own addresses: (front door port, its log)."""
    if cluster.pod_network is None:
        raise AssertionError(f"the local cluster has no pod network: {cluster.pod_network_note}")
    door, log, sd = free_port(), tmp_path / "fleet.log", tmp_path / "targets.json"
    argv = fleet_argv(cluster.kubeconfig, namespace, sd, door, 1.0, cluster.pod_netns)
    proc = background(argv, log)
    yield door, log
    terminate(proc, grace=10)


def scrapes(door: int) -> dict[str, Any]:
    """Who scraped each of the fleet's pods, and where they listen."""
    with urllib.request.urlopen(f"http://127.0.0.1:{door}/debug/scrapes", timeout=5) as r:
        return cast(dict[str, Any], json.loads(r.read()))


def tier_pods(dmds: Dmds, deployment: str) -> set[str]:
    pods = dmds.core.list_namespaced_pod(
        dmds.namespace, label_selector=f"distillery.dev/deployment={deployment}"
    ).items
    return {
        str(p.metadata.name)
        for p in pods
        if not p.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    }


@pytest.mark.usefixtures("inference_extension")
def test_tiered_routes_render_gie_objects_the_picker_discovers_and_a_tier_at_zero_spills(
    operator: OperatorProcess,
    dmds: Dmds,
    cluster: Cluster,
    picker_workdir: Path,
    pickers: list[subprocess.Popen[bytes]],
    fleet: tuple[int, Path],
) -> None:
    bounds = operator.bounds
    ns = dmds.namespace
    for name in TIER_DMDS:
        doc = yaml.safe_load((EXAMPLES / name).read_text())
        if doc["metadata"]["name"] == "r1-qwen-7b":
            # The routine tier may scale to zero (no autoscaler runs here: kubectl scale
            # does); it starts at one replica, so it never passes through zero first.
            doc["spec"]["scaling"]["minReplicas"] = 0
            doc["spec"]["replicas"] = 1
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "routing" / "tiered-r1.yaml"))
    routes = ("deepseek-r1", "deepseek-r1-domains")
    for route in routes:

        def serving(route: str = route) -> bool:
            # Every tier ready and serving its own requests (a tier still starting spills).
            tiers = route_status(dmds, route).get("tiers") or []
            return ready_reason(dmds, route) == "True/Serving" and all(
                t["servingTo"] == t["name"] and t["readyReplicas"] > 0 for t in tiers
            )

        def seen(route: str = route) -> str:
            return describe_route(dmds, route)

        wait_for(serving, f"route {route} serving on every tier", bounds.ready, describe=seen)
    status = route_status(dmds, "deepseek-r1")
    assert status["backend"] == "InferencePool"
    tiers = {t["name"]: t for t in status["tiers"]}
    assert tiers["routine"]["pool"] == "deepseek-r1-routine" and tiers["hard"]["readyReplicas"] == 1
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["InferenceExtension"]["status"] == "True"
    assert conditions["Routed"]["reason"] == "HTTPRouteRendered"

    # Every object is on the server, so the releases' schemas accepted it.
    api = custom(dmds)
    pools = api.list_namespaced_custom_object(
        "inference.networking.k8s.io", "v1", ns, "inferencepools"
    )["items"]
    assert sorted(p["metadata"]["name"] for p in pools) == [
        "deepseek-r1-domains-general",
        "deepseek-r1-domains-math",
        "deepseek-r1-hard",
        "deepseek-r1-routine",
    ]
    objectives = {
        o["metadata"]["name"]: o["spec"]["priority"]
        for o in api.list_namespaced_custom_object(
            "inference.networking.x-k8s.io", "v1alpha2", ns, "inferenceobjectives"
        )["items"]
    }
    assert objectives["deepseek-r1-hard"] > objectives["deepseek-r1-routine"]
    http = api.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", ns, "httproutes", "deepseek-r1"
    )
    assert http["spec"]["rules"][-1]["backendRefs"][0]["name"] == "deepseek-r1-routine"
    api.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", ns, "httproutes", "deepseek-r1-domains"
    )
    # What `distillery render` prints is what the operator applied.
    rendered = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "distillery"), "render", "-n", ns, "-o", "json",
            str(EXAMPLES / "routing" / "tiered-r1.yaml"),
            *(str(EXAMPLES / n) for n in TIER_DMDS),
        ],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    # Applied over the operator's (a dry run), the rendered objects change nothing: the
    # same spec as the server holds once it has filled in its defaults.
    dry = json.loads(
        cluster.kubectl(
            "apply", "--server-side", "--dry-run=server", "--force-conflicts",
            "-n", ns, "-o", "json", "-f", "-", input=rendered,
        )
    )  # fmt: skip
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in dry["items"]}
    assert by_name[("HTTPRoute", "deepseek-r1")]["spec"] == http["spec"]
    live_pool = next(p for p in pools if p["metadata"]["name"] == "deepseek-r1-routine")
    assert by_name[("InferencePool", "deepseek-r1-routine")]["spec"] == live_pool["spec"]

    # The endpoint picker, built from its Go module, discovers the pool's pods.
    picker = dmds.apps.read_namespaced_deployment("deepseek-r1-routine-epp", ns)
    deployment: dict[str, Any] = dmds.api_client.sanitize_for_serialization(picker)  # type: ignore[no-untyped-call]
    proc, metrics_port, log = start_picker(cluster, dmds, deployment, picker_workdir)
    pickers.append(proc)

    def picker_sees(expected: set[str]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the picker exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return bool(expected) and pool_endpoints(metrics_port, "deepseek-r1-routine") == expected

    pods = tier_pods(dmds, "r1-qwen-7b")
    assert len(pods) == 1
    wait_for(
        lambda: picker_sees(pods),
        f"the picker lists the pool's pods {sorted(pods)}",
        bounds.within(30.0),
        describe=lambda: log.read_text()[-3000:],
    )
    # ... and scrapes each one's metrics at the pod's own address and port.
    door, fleet_log = fleet
    addresses = {
        f"{ns}/{p.metadata.name}": f"{p.status.pod_ip}:8000"
        for p in dmds.core.list_namespaced_pod(
            ns, label_selector="distillery.dev/deployment=r1-qwen-7b"
        ).items
        if str(p.metadata.name) in pods
    }

    def picker_scraped() -> bool:
        seen = scrapes(door)
        return all(
            seen.get(pod, {}).get("address") == address
            and seen[pod]["by"].get("Go-http-client", 0) > 0
            for pod, address in addresses.items()
        )

    wait_for(
        picker_scraped,
        f"the picker scrapes the pool's pods at {sorted(addresses.values())}",
        bounds.within(30.0),
        describe=lambda: f"{scrapes(door)}\n{fleet_log.read_text()[-2000:]}",
    )
    cluster.kubectl("scale", "dmd", "r1-qwen-7b", "-n", ns, "--replicas=2")
    two = wait_for(
        lambda: now if len(now := tier_pods(dmds, "r1-qwen-7b")) == 2 else None,
        "two ready routine pods",
        bounds.ready,
    )
    wait_for(
        lambda: picker_sees(two),
        f"the picker follows the pool to {sorted(two)}",
        bounds.within(30.0),
        describe=lambda: log.read_text()[-3000:],
    )

    # The routine tier at zero: its requests go to the hard tier, and the route says so.
    cluster.kubectl("scale", "dmd", "r1-qwen-7b", "-n", ns, "--replicas=0")

    def spilled() -> bool:
        t = {x["name"]: x for x in route_status(dmds, "deepseek-r1")["tiers"]}
        live = api.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", ns, "httproutes", "deepseek-r1"
        )
        backend = live["spec"]["rules"][-1]["backendRefs"][0]
        return bool(
            t["routine"]["servingTo"] == "hard"
            and t["routine"]["spillReason"] == "AtZero"
            and backend["name"] == "deepseek-r1-hard"
        )

    wait_for(
        spilled,
        "the routine tier at zero spills to the hard tier",
        bounds.within(operator.settings.resync_interval_seconds, POD_START),
        describe=lambda: describe_route(dmds, "deepseek-r1"),
    )
    assert ready_reason(dmds, "deepseek-r1") == "True/Serving"
    cluster.kubectl("scale", "dmd", "r1-qwen-7b", "-n", ns, "--replicas=1")
    wait_for(
        lambda: route_status(dmds, "deepseek-r1")["tiers"][0]["servingTo"] == "routine",
        "the routine tier serves its own requests again",
        bounds.ready,
        describe=lambda: describe_route(dmds, "deepseek-r1"),
    )
    events = dmds.core.list_namespaced_event(
        ns, field_selector="involvedObject.kind=ReasoningRoute"
    ).items
    assert {"Spilling", "SpillEnded"} <= {e.reason for e in events}

    # A tier and the gateway dropped while no operator runs: the next one prunes both
    # (it lists the route's children on first sight), and leaves the other tier be.
    operator.stop()
    cluster.kubectl(
        "patch", "rroute", "deepseek-r1-domains", "-n", ns, "--type=json", "-p",
        json.dumps([
            {"op": "replace", "path": "/spec/tiers", "value": [
                {"name": "general", "deployment": "r1-llama-8b"}
            ]},
            {"op": "remove", "path": "/spec/rules"},
            {"op": "remove", "path": "/spec/gateway"},
        ]),
    )  # fmt: skip
    operator.start()

    def domain_children() -> set[tuple[str, str]]:
        selector = "distillery.dev/route=deepseek-r1-domains"
        pools = api.list_namespaced_custom_object(
            "inference.networking.k8s.io", "v1", ns, "inferencepools", label_selector=selector
        )["items"]
        routes = api.list_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", ns, "httproutes", label_selector=selector
        )["items"]
        pickers = dmds.apps.list_namespaced_deployment(ns, label_selector=selector).items
        return (
            {("InferencePool", p["metadata"]["name"]) for p in pools}
            | {("HTTPRoute", r["metadata"]["name"]) for r in routes}
            | {("Deployment", str(d.metadata.name)) for d in pickers}
        )

    wait_for(
        lambda: (
            domain_children()
            == {
                ("InferencePool", "deepseek-r1-domains-general"),
                ("Deployment", "deepseek-r1-domains-general-epp"),
            }
        ),
        "the restarted operator prunes the math tier and the HTTPRoute",
        bounds.ready,
        describe=lambda: (
            f"{sorted(domain_children())}\n{describe_route(dmds, 'deepseek-r1-domains')}"
        ),
    )
