"""A real Prometheus scrapes a local endpoint and answers PromQL.

The endpoint serves the classic text exposition (0.0.4) the way vLLM does. It does not
use prometheus_client's content negotiation: with Prometheus 2.42's Accept header that
picks OpenMetrics, and the client then renames ``vllm:x`` samples to ``vllm_x``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from localprom import Prometheus
from tests.integration.fake_engine import serve
from tests.integration.waits import SCRAPE_INTERVAL, Bounds, wait_for

pytestmark = pytest.mark.prometheus


@pytest.fixture
def exporter() -> Iterator[tuple[int, Gauge]]:
    registry = CollectorRegistry()
    waiting = Gauge("vllm:num_requests_waiting", "waiting", ["model_name"], registry=registry)
    with serve(lambda: generate_latest(registry)) as port:
        yield port, waiting


def test_scrapes_and_answers(
    prometheus: Callable[..., Prometheus], exporter: tuple[int, Gauge]
) -> None:
    port, waiting = exporter
    waiting.labels("m").set(7)
    prom = prometheus(static_targets=[f"127.0.0.1:{port}"])
    result = wait_for(
        lambda: prom.query('sum(vllm:num_requests_waiting{model_name="m"})'),
        "a scraped sample",
        Bounds.within(2 * SCRAPE_INTERVAL),
    )
    assert float(result[0]["value"][1]) == 7.0
    waiting.labels("m").set(2)
    wait_for(
        lambda: float(prom.query("sum(vllm:num_requests_waiting)")[0]["value"][1]) == 2,
        "the new value",
        Bounds.within(2 * SCRAPE_INTERVAL),
    )
    up = prom.query("up")
    assert [float(s["value"][1]) for s in up] == [1.0]
