"""The operator's own Prometheus metrics, prefixed ``distillery_``.

One registry, so a test or the benchmark can read it directly and the HTTP endpoint
serves exactly these series.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
LEADER = Gauge(
    "distillery_leader",
    "1 while this instance holds the leader election Lease (or runs without one).",
    registry=REGISTRY,
)
# Gauges with one series per DMD; forget() drops a deleted DMD's from all of them.
_PER_DMD: list[Gauge] = []


def _per_dmd(name: str, help_: str) -> Gauge:
    gauge = Gauge(name, help_, ["namespace", "name"], registry=REGISTRY)
    _PER_DMD.append(gauge)
    return gauge


DESIRED_REPLICAS = _per_dmd(
    "distillery_desired_replicas",
    "Replicas the serving Deployment is rendered with (spec.replicas within its bounds).",
)
AUTOSCALER_DESIRED_REPLICAS = _per_dmd(
    "distillery_autoscaler_desired_replicas",
    "Replicas the autoscaler's last decision asked for, after damping and limits.",
)
CURRENT_REPLICAS = _per_dmd("distillery_current_replicas", "Running replicas per DMD.")
READY_REPLICAS = _per_dmd("distillery_ready_replicas", "Ready replicas per DMD.")
COST_PER_HOUR = _per_dmd(
    "distillery_cost_per_hour", "Current GPU cost per hour per DMD (catalog currency)."
)
STALLED = _per_dmd("distillery_stalled", "1 when the DMD is Stalled.")
BUDGET_LIMITED = _per_dmd(
    "distillery_budget_limited",
    "1 while the DMD wants more replicas than scaling.maxCostPerHour pays for.",
)
SCALING_DECISIONS = Counter(
    "distillery_scaling_decisions_total",
    "Autoscaler decisions that changed replicas, by direction and reason.",
    ["direction", "reason"],
    registry=REGISTRY,
)


def forget(namespace: str, name: str) -> None:
    """Drop the per-DMD series of a deleted DMD."""
    for gauge in _PER_DMD:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)


_serving: set[tuple[str, int]] = set()


def serve(port: int, bind: str) -> None:
    """Serve the registry over HTTP once per address: a standby starts it before it
    leads, the runtime when it starts."""
    if (bind, port) in _serving:
        return
    start_http_server(port, addr=bind, registry=REGISTRY)
    _serving.add((bind, port))
