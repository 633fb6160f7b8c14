"""The autoscaler closed on real Prometheus: load up -> scale up, load down -> scale down
after the window, Prometheus gone -> hold and say so, Prometheus back -> recover."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from distillery.api.types import GROUP, PLURAL, VERSION
from localcluster import Cluster
from localprom import Prometheus
from tests.integration.conftest import wait_for
from tests.integration.fake_engine import FakeEngines, serve
from tests.integration.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

SPEC = {
    "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"},
    "serving": {"maxConcurrency": 16},  # 16 slots; the exporter fills at most 16 per pod
    "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
    # A 5 s cold start keeps the scale-down window (two cold starts) at the 20 s asked.
    "scaling": {
        "minReplicas": 1,
        "maxReplicas": 6,
        "startupSeconds": 5,
        "scaleDown": {"stabilizationSeconds": 20},
    },
}


class Load:
    """Spreads a total outstanding load over the DMD's ready pods, continuously."""

    def __init__(self, engines: FakeEngines, core: client.CoreV1Api, ns: str):
        self.engines, self.core, self.ns = engines, core, ns
        self.total = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            pods = [
                p.metadata.name
                for p in self.core.list_namespaced_pod(
                    self.ns, label_selector="distillery.dev/deployment=qwen"
                ).items
                if any(
                    c.type == "Ready" and c.status == "True" for c in (p.status.conditions or [])
                )
            ]
            if pods:
                each = self.total / len(pods)
                running = min(each, 16.0)
                self.engines.set(
                    {(self.ns, p): (running, each - running, running / 16) for p in pods}
                )
            self.stop.wait(0.5)


def replicas(api_client: client.ApiClient, ns: str) -> int:
    obj = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "qwen"
    )
    return int(obj["spec"].get("replicas") or 0)


def condition(api_client: client.ApiClient, ns: str, type_: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "qwen"
    )
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


@pytest.fixture
def exporter() -> Iterator[tuple[FakeEngines, int]]:
    engines = FakeEngines()
    with serve(engines.exposition) as port:
        yield engines, port


def test_scales_with_load_and_holds_without_metrics(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    crd_installed: None,
    tmp_path: Path,
    exporter: tuple[FakeEngines, int],
    prometheus: Callable[..., Prometheus],
) -> None:
    engines, port = exporter
    prom = prometheus(static_targets=[f"127.0.0.1:{port}"], honor_labels=True)
    op = OperatorProcess(
        cluster,
        namespace,
        tmp_path / "op",
        "--prometheus-url",
        prom.url,
        "--autoscale-interval",
        "2",
    ).start()
    load = Load(engines, client.CoreV1Api(api_client), namespace)
    load.thread.start()
    try:
        cluster.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "distillery.dev/v1alpha1",
                    "kind": "DistilledModelDeployment",
                    "metadata": {"name": "qwen"},
                    "spec": SPEC,
                }
            ),
        )
        cluster.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", "dmd/qwen", "--timeout=120s"
        )
        wait_for(
            lambda: condition(api_client, namespace, "MetricsAvailable").get("status") == "True",
            "MetricsAvailable=True",
            timeout=60,
        )
        # 36 outstanding sequences of 16 slots each: 16 run, 20 wait on one replica. The
        # demand (served work plus the queue) asks for three or more, never the
        # maximum: the queue is bounded by what it could occupy.
        load.total = 36
        wait_for(lambda: replicas(api_client, namespace) >= 3, "scale up to 3+", timeout=90)
        cluster.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", "dmd/qwen", "--timeout=120s"
        )
        time.sleep(6)  # a few more decisions on the spread load
        up = replicas(api_client, namespace)
        assert 3 <= up <= 5, up
        obj = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "qwen"
        )
        decisions = obj["status"]["autoscaling"]["lastDecisions"]
        ups = [d for d in decisions if d["to"] > d["from"]]
        assert ups and ups[0]["inputs"]["waiting"] >= 10, decisions
        # The counters went through Prometheus' rate(): both grow with the running
        # sequences, so whatever the window caught, a request is 80 tok/s x 10 s.
        inputs = ups[-1]["inputs"]
        per_request = inputs["generationTokensPerSecond"] / inputs["completionsPerSecond"]
        assert per_request == pytest.approx(800, rel=0.15), inputs
        assert inputs["demandReplicas"] > 0, inputs
        auto = obj["status"]["autoscaling"]
        assert auto["headroomLearned"] is False and 0.5 <= auto["utilizationScale"] <= 1.0
        # Load falls: nothing happens inside the 20 s window, then it scales down.
        load.total = 4
        t0 = time.monotonic()
        time.sleep(10)
        assert replicas(api_client, namespace) == up
        wait_for(lambda: replicas(api_client, namespace) == 1, "scale down to 1", timeout=120)
        assert time.monotonic() - t0 >= 18
        # Load rises again, then Prometheus goes away: hold, and say so.
        load.total = 30
        wait_for(lambda: replicas(api_client, namespace) >= 2, "scale up to 2+", timeout=90)
        load.total = 0
        prom.stop()
        held = replicas(api_client, namespace)
        wait_for(
            lambda: condition(api_client, namespace, "MetricsAvailable").get("status") == "False",
            "MetricsAvailable=False",
            timeout=60,
        )
        assert "Prometheus" in condition(api_client, namespace, "MetricsAvailable")["message"]
        time.sleep(30)  # longer than the scale-down window: still no scale-down
        assert replicas(api_client, namespace) >= held
        # Prometheus back on the same port: metrics flow again.
        prom.start()
        wait_for(
            lambda: condition(api_client, namespace, "MetricsAvailable").get("status") == "True",
            "MetricsAvailable=True again",
            timeout=90,
        )
    finally:
        load.stop.set()
        load.thread.join(timeout=5)
        op.stop()


def test_gpu_capacity_exhausted_stops_adding_and_says_why(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    crd_installed: None,
    tmp_path: Path,
    exporter: tuple[FakeEngines, int],
    prometheus: Callable[..., Prometheus],
) -> None:
    """Four L4 nodes of one GPU each: the load asks for more than fit. The autoscaler
    stops at what it asked once the scheduler says no, and ScalingLimited carries the
    scheduler's reason."""
    engines, port = exporter
    prom = prometheus(static_targets=[f"127.0.0.1:{port}"], honor_labels=True)
    op = OperatorProcess(
        cluster,
        namespace,
        tmp_path / "op",
        "--prometheus-url",
        prom.url,
        "--autoscale-interval",
        "2",
    ).start()
    load = Load(engines, client.CoreV1Api(api_client), namespace)
    load.thread.start()
    spec = {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"},
        "serving": {"maxConcurrency": 16},
        "placement": {"gpuTypes": ["nvidia-l4"]},
        "scaling": {"minReplicas": 1, "maxReplicas": 8, "scaleUp": {"maxStep": 2}},
    }
    try:
        cluster.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "distillery.dev/v1alpha1",
                    "kind": "DistilledModelDeployment",
                    "metadata": {"name": "qwen"},
                    "spec": spec,
                }
            ),
        )
        cluster.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", "dmd/qwen", "--timeout=120s"
        )
        load.total = 200  # wants 8 replicas of 12; only 4 L4 GPUs exist
        limited = wait_for(
            lambda: (
                (c := condition(api_client, namespace, "ScalingLimited")).get("status") == "True"
                and c
            ),
            "ScalingLimited",
            timeout=120,
        )
        assert limited["reason"] == "Unschedulable", limited
        assert "Insufficient nvidia.com/gpu" in limited["message"], limited
        held = replicas(api_client, namespace)
        assert held < 8, "it stopped adding replicas that cannot be scheduled"
        load.total = 400
        time.sleep(15)
        assert replicas(api_client, namespace) == held
    finally:
        load.stop.set()
        load.thread.join(timeout=5)
        op.stop()
