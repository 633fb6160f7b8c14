"""Reading Prometheus answers into per-pod metrics (the query results are canned: what
the HTTP API returns for an instant query; tests/integration/test_prometheus.py runs the
same code against a real Prometheus)."""

from __future__ import annotations

from typing import Any

from distillery.autoscale.source import (
    ANALYSIS_QUERIES,
    ENGINE_QUERIES,
    PrometheusOptions,
    PrometheusSource,
)


def series(value: float | str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1_700_000_000.0, str(value)]}


class Canned(PrometheusSource):
    """Prometheus answers by query text; any other query has no series."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]]) -> None:
        super().__init__(PrometheusOptions(url="http://127.0.0.1:9"))
        self.answers = answers
        self.asked: list[str] = []

    def _query(self, promql: str) -> list[dict[str, Any]]:
        self.asked.append(promql)
        for key, result in self.answers.items():
            if key in promql:
                return result
        return []


def test_collect_keeps_pods_and_skips_series_without_a_pod_or_at_nan() -> None:
    q = ENGINE_QUERIES["vllm"]
    assert q.ttft_buckets is not None
    source = Canned(
        {
            q.running: [
                series(3, namespace="ns", pod="a"),
                series(7, namespace="ns"),  # no pod label: not a replica's
                series("NaN", namespace="ns", pod="b"),
            ],
            q.ttft_buckets: [
                series(0.5, namespace="ns", pod="a", le="0.1"),
                series(2.0, namespace="ns", pod="a", le="+Inf"),
                series(9.0, namespace="ns", pod="a"),  # no le: not a bucket
            ],
        }
    )
    pods = source.collect(["vllm", "vllm"])
    assert set(pods) == {("ns", "a")}
    assert pods["ns", "a"].running == 3.0
    assert pods["ns", "a"].ttft_buckets == {0.1: 0.5, float("inf"): 2.0}
    # One query per metric for every pod, however many engines repeat.
    assert len(source.asked) == len(set(source.asked))


def test_window_counts_by_pod_and_zero_failures_where_responses_were_counted() -> None:
    a = ANALYSIS_QUERIES["vllm"]
    assert a.responses is not None
    source = Canned(
        {
            a.requests[0]: [series(40, namespace="ns", pod="canary")],
            'status="5xx"': [],  # the failures' series: none yet
            a.responses[1]: [series(50, namespace="ns", pod="canary")],
            "time_to_first_token_seconds_bucket": [
                series(30, namespace="ns", pod="canary", le="1.0"),
            ],
        }
    )
    counts = source.window_counts("vllm", 'n"s', 120)
    assert set(counts) == {"canary"}
    canary = counts["canary"]
    assert canary.requests == 40.0 and canary.ttft_buckets == {1.0: 30.0}
    # No 5xx series yet: zero failures among the responses, not "unknown".
    assert canary.failures == 0.0
    # The namespace is quoted into the matcher, never breaking out of it.
    assert all('namespace="ns"' in promql for promql in source.asked)
