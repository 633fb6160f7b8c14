"""The operator's own Prometheus metrics, prefixed ``distillery_``.

One registry, so a test or the benchmark can read it directly and the HTTP endpoint
serves exactly these series.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

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
WATCH_LISTINGS = Counter(
    "distillery_watch_listings_total",
    "Complete listings of a watched resource: one at start, one more each time its "
    "watch fell too far behind (410 Gone).",
    ["resource"],
    registry=REGISTRY,
)
WATCH_ERRORS = Counter(
    "distillery_watch_errors_total",
    "Failed list or watch requests of a watched resource, by HTTP status or error; each "
    "is retried with backoff.",
    ["resource", "reason"],
    registry=REGISTRY,
)
INDEXED = Gauge(
    "distillery_indexed",
    "1 once every watch has listed and the operator acts on what it sees; 0 before.",
    registry=REGISTRY,
)


class _PerDmdTable:
    """The per-DMD gauges as one table: a row of values per DMD, turned into series when
    scraped. prometheus_client's labelled children would hold a lock and a value object
    per DMD and series (5 KiB a DMD over seven series, 10 MiB at 2,000 DMDs); a row of
    floats is all the values need. The scrape runs in the HTTP server's thread, so the
    rows are read and written under a lock."""

    def __init__(self) -> None:
        self.series: list[tuple[str, str]] = []
        self.rows: dict[tuple[str, str], list[float | None]] = {}
        self.lock = threading.Lock()

    def gauge(self, name: str, help_: str) -> PerDmdGauge:
        self.series.append((name, help_))
        return PerDmdGauge(self, len(self.series) - 1)

    def set(self, index: int, key: tuple[str, str], value: float) -> None:
        with self.lock:
            row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = [None] * len(self.series)
            row[index] = float(value)

    def forget(self, key: tuple[str, str]) -> None:
        with self.lock:
            self.rows.pop(key, None)

    def describe(self) -> Iterator[Metric]:
        for name, help_ in self.series:
            yield GaugeMetricFamily(name, help_, labels=["namespace", "name"])

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            rows = [(key, list(row)) for key, row in self.rows.items()]
        for index, (name, help_) in enumerate(self.series):
            family = GaugeMetricFamily(name, help_, labels=["namespace", "name"])
            for (namespace, dmd), row in rows:
                value = row[index]
                if value is not None:
                    family.add_metric([namespace, dmd], value)
            yield family


class PerDmdGauge:
    """One per-DMD series of the table, used as a labelled Gauge is:
    ``GAUGE.labels(namespace, name).set(value)``."""

    def __init__(self, table: _PerDmdTable, index: int):
        self.table, self.index = table, index

    def labels(self, namespace: str, name: str) -> _Cell:
        return _Cell(self, (namespace, name))


class _Cell:
    __slots__ = ("gauge", "key")

    def __init__(self, gauge: PerDmdGauge, key: tuple[str, str]):
        self.gauge, self.key = gauge, key

    def set(self, value: float) -> None:
        self.gauge.table.set(self.gauge.index, self.key, value)


_PER_DMD = _PerDmdTable()
_per_dmd = _PER_DMD.gauge

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
REGISTRY.register(_PER_DMD)

SCALING_DECISIONS = Counter(
    "distillery_scaling_decisions_total",
    "Autoscaler decisions that changed replicas, by direction and reason.",
    ["direction", "reason"],
    registry=REGISTRY,
)


def forget(namespace: str, name: str) -> None:
    """Drop the per-DMD series of a deleted DMD."""
    _PER_DMD.forget((namespace, name))


_serving: set[tuple[str, int]] = set()


def serve(port: int, bind: str) -> None:
    """Serve the registry over HTTP once per address: a standby starts it before it
    leads, the runtime when it starts."""
    if (bind, port) in _serving:
        return
    start_http_server(port, addr=bind, registry=REGISTRY)
    _serving.add((bind, port))
