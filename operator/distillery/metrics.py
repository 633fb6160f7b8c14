"""The operator's own Prometheus metrics, prefixed ``distillery_``.

One registry, so a test or the benchmark can read it directly and the HTTP endpoint
serves exactly these series.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

RECONCILE_SECONDS = Histogram(
    "distillery_reconcile_duration_seconds",
    "Time to reconcile one DistilledModelDeployment.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "distillery_reconcile_errors_total",
    "Reconciles that failed, by reason.",
    ["reason"],
    registry=REGISTRY,
)
API_WRITES = Counter(
    "distillery_api_writes_total",
    "Writes to the Kubernetes API, by verb and kind.",
    ["verb", "kind"],
    registry=REGISTRY,
)
DESIRED_REPLICAS = Gauge(
    "distillery_desired_replicas",
    "Replicas the serving Deployment is rendered with (spec.replicas within its bounds).",
    ["namespace", "name"],
    registry=REGISTRY,
)
AUTOSCALER_DESIRED_REPLICAS = Gauge(
    "distillery_autoscaler_desired_replicas",
    "Replicas the autoscaler's last decision asked for, after damping and limits.",
    ["namespace", "name"],
    registry=REGISTRY,
)
CURRENT_REPLICAS = Gauge(
    "distillery_current_replicas",
    "Running replicas per DMD.",
    ["namespace", "name"],
    registry=REGISTRY,
)
READY_REPLICAS = Gauge(
    "distillery_ready_replicas",
    "Ready replicas per DMD.",
    ["namespace", "name"],
    registry=REGISTRY,
)
COST_PER_HOUR = Gauge(
    "distillery_cost_per_hour",
    "Current GPU cost per hour per DMD (catalog currency).",
    ["namespace", "name"],
    registry=REGISTRY,
)
STALLED = Gauge(
    "distillery_stalled",
    "1 when the DMD is Stalled.",
    ["namespace", "name"],
    registry=REGISTRY,
)
BUDGET_LIMITED = Gauge(
    "distillery_budget_limited",
    "1 while the DMD wants more replicas than scaling.maxCostPerHour pays for.",
    ["namespace", "name"],
    registry=REGISTRY,
)
SCALING_DECISIONS = Counter(
    "distillery_scaling_decisions_total",
    "Autoscaler decisions that changed replicas, by direction and reason.",
    ["direction", "reason"],
    registry=REGISTRY,
)


def forget(namespace: str, name: str) -> None:
    """Drop the per-DMD series of a deleted DMD."""
    gauges = (
        DESIRED_REPLICAS,
        AUTOSCALER_DESIRED_REPLICAS,
        CURRENT_REPLICAS,
        READY_REPLICAS,
        COST_PER_HOUR,
        STALLED,
    )
    for gauge in (*gauges, BUDGET_LIMITED):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
