"""End to end: real control plane, real Prometheus, the emulated vLLM fleet serving the
pods the scheduler placed, a scripted load over HTTP, and the operator scaling.

Step up -> scale up within a bounded number of autoscaler intervals and the new pods go
Ready; Prometheus stopped -> replicas hold and MetricsAvailable=False; Prometheus back ->
metrics return and, the load being gone, it scales down after its window."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from distillery.simulate.workload import Request
from localcluster import Cluster
from tests.integration.closed_loop import TIME_SCALE as SCALE
from tests.integration.closed_loop import Loop
from tests.integration.waits import Dmds

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.prometheus]
ROOT = Path(__file__).resolve().parents[2]
# The scale-down window: the stabilization asked, longer than two 3 s cold starts.
WINDOW = 10
sys.path.insert(0, str(ROOT / "hack"))

from replay import Result, replay  # noqa: E402


def spec() -> dict[str, Any]:
    return {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"},
        "serving": {"maxConcurrency": 8},  # ~1,060 output tok/s per replica at 8 slots
        "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
        "scaling": {
            "minReplicas": 1,
            "maxReplicas": 4,
            "startupSeconds": 3,
            "scaleDown": {"stabilizationSeconds": WINDOW},
        },
    }


def steady(rate_per_trace_second: float, seconds: float) -> list[Request]:
    n = int(rate_per_trace_second * seconds)
    return [Request(i / rate_per_trace_second, 500, 2000) for i in range(n)]


@pytest.mark.usefixtures("crd_installed")
def test_closed_loop(cluster: Cluster, namespace: str, loop: Loop, dmds: Dmds) -> None:
    prom, door, bounds = loop.prometheus, loop.door, loop.operator.bounds
    results: list[Result] = []
    dmds.apply("qwen", spec())
    dmds.wait_condition("qwen", "Ready", bounds.ready)
    dmds.wait_condition("qwen", "MetricsAvailable", bounds.metrics)

    # Step up: 1.5 requests/s of 2,000-token answers is 3,000 output tok/s, ~2.8
    # replicas of decode at 8 slots: at 85% utilization, 3 or 4 replicas.
    load = threading.Thread(
        target=lambda: results.extend(
            asyncio.run(replay(steady(1.5, 900), f"http://127.0.0.1:{door}", "qwen", SCALE))
        ),
        daemon=True,
    )
    load.start()
    dmds.wait_replicas("qwen", lambda n: n >= 3, "scale-up to 3+", bounds.scale_up)
    dmds.wait_condition("qwen", "Ready", bounds.ready)
    # Prometheus scraped each engine at its pod's own address (the pod network).
    addresses = {
        p.metadata.name: f"{p.status.pod_ip}:8000"
        for p in dmds.core.list_namespaced_pod(
            namespace, label_selector="distillery.dev/deployment=qwen"
        ).items
    }
    scraped = {
        r["metric"]["pod"]: r["metric"]["instance"]
        for r in prom.query(f'up{{namespace="{namespace}"}} == 1')
    }
    assert cluster.pod_network is not None, cluster.pod_network_note
    assert scraped and all(addresses.get(pod) == at for pod, at in scraped.items()), (
        scraped,
        addresses,
    )

    # Prometheus gone while the load runs: hold, and say so; the load then ends and
    # the scale-down window passes, still no scale-down without metrics.
    prom.stop()
    dmds.wait_condition("qwen", "MetricsAvailable", bounds.decisions(2), status="False")
    held = dmds.replicas("qwen")
    assert held >= 2
    load.join(timeout=bounds.within(900 / SCALE))
    served = [r for r in results if r.status == 200]
    assert len(served) >= 0.95 * len(results) > 0
    assert len({r.pod for r in served}) >= 2, "the front door spread the load"
    # Longer than the scale-down window (two 3 s cold starts, at least 10 s).
    time.sleep(2 * WINDOW)
    assert dmds.replicas("qwen") == held, dmds.describe("qwen")

    # Prometheus back: metrics return; the load is gone, so it scales down after its
    # window: to one replica, or to what holds the rise this young DMD has seen (the
    # step up from idle, when the minute boundaries caught one before the load).
    prom.start()
    dmds.wait_condition("qwen", "MetricsAvailable", bounds.metrics)
    dmds.wait_replicas(
        "qwen", lambda n: n < held, f"scale-down below {held}", bounds.scale_down(WINDOW)
    )
    # /scale is written before the decision lands in status: wait for both.
    decisions = dmds.wait(
        "qwen",
        lambda: (
            (d := dmds.get("qwen")["status"]["autoscaling"]["lastDecisions"])
            and any(x["to"] < x["from"] for x in d)
            and d
        ),
        "the scale-down decision in status",
        bounds.decisions(2),
    )
    assert any(d["to"] > d["from"] for d in decisions)
