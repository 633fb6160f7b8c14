"""Engine metrics from Prometheus, for every DMD at once (I/O).

Each engine's PromQL lives in its record (:mod:`distillery.engines`). A pass runs
one query per metric for all pods of all DMDs (``sum by (namespace, pod)``), so 1,000
DMDs cost the same handful of queries as one. Pods map to DMDs through the ``namespace``
and ``pod`` labels that Kubernetes service discovery and PodMonitors attach.

TTFT percentiles are computed here from the summed bucket rates of a DMD's pods, since
a percentile cannot be averaged across pods. Staleness: a pod whose newest sample is
older than ``stale_after`` seconds counts as not reporting.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_api_client import PrometheusConnect

from distillery.autoscale.inputs import PodCounts, PodKey, PodMetrics
from distillery.engines import ENGINES, AnalysisQueries, EngineQueries

# One entry per engine, from its record in distillery.engines.
ENGINE_QUERIES: dict[str, EngineQueries] = {name: e.queries for name, e in ENGINES.items()}
ANALYSIS_QUERIES: dict[str, AnalysisQueries] = {name: e.analysis for name, e in ENGINES.items()}


# (namespace, DMD name)
DmdKey = tuple[str, str]


class MetricsSource(Protocol):
    """Where the autoscaler reads engine metrics: Prometheus, or a fake in tests."""

    def collect(self, engines: Iterable[str]) -> dict[PodKey, PodMetrics]: ...
    def fresh(self, metrics: PodMetrics, now: float | None = None) -> bool: ...
    def demand(self, queries: Mapping[DmdKey, str]) -> dict[DmdKey, float | None]: ...


class MetricsUnavailableError(RuntimeError):
    """Prometheus could not be queried; the message says why."""


@dataclass(frozen=True)
class PrometheusOptions:
    url: str
    bearer_token_file: str = ""
    ca_file: str = ""
    insecure_skip_verify: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float = 10.0
    stale_after_seconds: float = 60.0


class PrometheusSource:
    def __init__(self, options: PrometheusOptions):
        self.options = options
        headers = dict(options.headers)
        if options.bearer_token_file:
            with open(options.bearer_token_file, encoding="utf-8") as f:
                headers["Authorization"] = f"Bearer {f.read().strip()}"
        self.client = PrometheusConnect(
            url=options.url, headers=headers or None, disable_ssl=options.insecure_skip_verify
        )
        if options.ca_file:
            self.client._session.verify = options.ca_file
        self.queries = 0

    def _query(self, promql: str) -> list[dict[str, Any]]:
        self.queries += 1
        try:
            result = self.client.custom_query(
                promql, params={"timeout": f"{self.options.timeout_seconds:g}s"}
            )
        except Exception as exc:  # noqa: BLE001 - any failure means "no metrics"
            # Never echo headers (they may carry a token): the URL and the error class do.
            raise MetricsUnavailableError(
                f"Prometheus at {self.options.url} did not answer: {type(exc).__name__}"
            ) from None
        return list(result)

    def collect(self, engines: Iterable[str]) -> dict[PodKey, PodMetrics]:
        """One query per metric per engine in use, for every pod at once."""
        pods: dict[PodKey, PodMetrics] = defaultdict(PodMetrics)
        for engine in sorted(set(engines)):
            q = ENGINE_QUERIES.get(engine)
            if q is None:
                continue
            for attr, promql in (
                ("running", q.running),
                ("waiting", q.waiting),
                ("kv_usage", q.kv_usage),
                ("prompt_tokens_rate", q.prompt_tokens_rate),
                ("completions_rate", q.completions_rate),
                ("generation_tokens_rate", q.generation_tokens_rate),
                ("computed_prompt_tokens_rate", q.computed_prompt_tokens_rate),
                ("ttft_sum", q.ttft_sum),
                ("last_sample", q.freshness),
            ):
                if promql is None:
                    continue
                for key, _, value in _pod_samples(self._query(promql)):
                    setattr(pods[key], attr, value)
            if q.ttft_buckets:
                for key, le, value in _pod_samples(self._query(q.ttft_buckets), "le"):
                    pods[key].ttft_buckets[float(le)] = value
        return dict(pods)

    def demand(self, queries: Mapping[DmdKey, str]) -> dict[DmdKey, float | None]:
        """Each DMD's demand outside its pods (a router's queue, a ``demandQuery``): the
        sum of the query's series; None when it has none or fails (unknown, not zero)."""
        out: dict[DmdKey, float | None] = {}
        for key, promql in queries.items():
            try:
                result = self._query(promql)
            except MetricsUnavailableError:
                out[key] = None
                continue
            values = [float(item["value"][1]) for item in result if "value" in item]
            values = [v for v in values if not math.isnan(v)]
            out[key] = sum(values) if values else None
        return out

    def window_counts(
        self, engine: str, namespace: str, window_seconds: int
    ) -> dict[str, PodCounts]:
        """Per pod of ``namespace``: counter increases over the last ``window_seconds``
        (one query per counter, whatever the number of pods)."""
        q = ANALYSIS_QUERIES.get(engine)
        pods: dict[str, PodCounts] = defaultdict(PodCounts)
        if q is None:
            return {}
        ns = namespace.replace("\\", "").replace('"', "")
        window = f"{max(1, window_seconds)}s"

        def increase(metric: tuple[str, str], by: str) -> list[dict[str, Any]]:
            name, extra = metric
            matchers = f'namespace="{ns}"' + (f",{extra}" if extra else "")
            return self._query(f"sum by ({by}) (increase({name}{{{matchers}}}[{window}]))")

        for attr, metric in (
            ("requests", q.requests),
            ("failures", q.failures),
            ("responses", q.responses),
            ("ttft_sum", q.ttft_sum),
        ):
            if metric is None:
                continue
            for key, _, value in _pod_samples(increase(metric, "namespace, pod")):
                setattr(pods[key[1]], attr, value)
        if q.ttft_buckets is not None:
            buckets = increase(q.ttft_buckets, "namespace, pod, le")
            for key, le, value in _pod_samples(buckets, "le"):
                pods[key[1]].ttft_buckets[float(le)] = value
        # A pod that exports the counters but had no failure yet has zero failures
        # (a grouped status series appears only once one response had it).
        if q.failures is not None:
            for counts in pods.values():
                base = counts.responses if q.responses is not None else counts.requests
                if counts.failures is None and base is not None:
                    counts.failures = 0.0
        return dict(pods)

    def fresh(self, metrics: PodMetrics, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - metrics.last_sample <= self.options.stale_after_seconds


def _pod_samples(
    result: Iterable[Mapping[str, Any]], label: str | None = None
) -> Iterator[tuple[PodKey, str, float]]:
    """A query's samples by pod: (pod, the value of ``label``, value); series without a
    pod, without ``label`` when one is asked for, or at NaN are skipped."""
    for item in result:
        labels = item.get("metric", {})
        ns, pod = labels.get("namespace"), labels.get("pod")
        extra = labels.get(label) if label is not None else ""
        value = float(item["value"][1])
        if ns and pod and extra is not None and not math.isnan(value):
            yield (str(ns), str(pod)), str(extra), value
