"""A test exporter that serves vLLM's metrics for the pods of a DMD, with the
``namespace`` and ``pod`` labels Prometheus' Kubernetes discovery would attach (scraped
with ``honor_labels``). Classic text exposition (0.0.4), written by the same function
as the local fleet's, which a unit test holds to the pinned vLLM release's metric list."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from distillery.engines import vllm
from distillery.simulate.exposition import VllmPod, exposition

MODEL_NAME = "m"
N_BUCKETS = len(vllm.TTFT_BUCKETS) + 1


class FakeEngines:
    """Gauges set by the test, and the counters a vLLM pod grows while it runs them:
    every running sequence makes ``tokens_per_sequence`` output tokens a second and
    finishes after ``sequence_seconds`` (so a pod finishes running / sequence_seconds
    requests a second, each with ``prompt_tokens`` of prompt and a TTFT of ``ttft``)."""

    def __init__(
        self,
        tokens_per_sequence: float = 80.0,
        sequence_seconds: float = 10.0,
        prompt_tokens: float = 500.0,
    ) -> None:
        self.lock = threading.Lock()
        # (namespace, pod) -> (running, waiting, kv_usage)
        self.pods: dict[tuple[str, str], tuple[float, float, float]] = {}
        # (namespace, pod) -> [generation tokens, finished requests, prompt tokens]
        self.counters: dict[tuple[str, str], list[float]] = {}
        self.rates = (tokens_per_sequence, sequence_seconds, prompt_tokens)
        # Every finished request's TTFT, observed into vLLM's buckets per pod.
        self.ttft = 0.2
        self.ttft_counts: dict[tuple[str, str], list[float]] = {}
        self.ttft_sums: dict[tuple[str, str], float] = {}
        self.last = time.monotonic()

    def set(self, pods: dict[tuple[str, str], tuple[float, float, float]]) -> None:
        with self.lock:
            self._advance()
            self.pods = dict(pods)

    def _advance(self) -> None:
        now = time.monotonic()
        dt, self.last = now - self.last, now
        per_token, seconds, prompt = self.rates
        for key, (running, _, _) in self.pods.items():
            c = self.counters.setdefault(key, [0.0, 0.0, 0.0])
            finished = running / seconds * dt
            c[0] += running * per_token * dt
            c[1] += finished
            c[2] += finished * prompt
            counts = self.ttft_counts.setdefault(key, [0.0] * N_BUCKETS)
            counts[bisect.bisect_left(vllm.TTFT_BUCKETS, self.ttft)] += finished
            self.ttft_sums[key] = self.ttft_sums.get(key, 0.0) + finished * self.ttft

    def exposition(self) -> bytes:
        with self.lock:
            self._advance()
            items = sorted(self.pods.items())
            counters = {k: list(v) for k, v in self.counters.items()}
            ttft = {k: (list(v), self.ttft_sums[k]) for k, v in self.ttft_counts.items()}
        pods = []
        for (ns, pod), (running, waiting, kv) in items:
            generated, finished, prompt = counters.get((ns, pod), [0.0, 0.0, 0.0])
            ttft_counts, ttft_sum = ttft.get((ns, pod), ([], 0.0))
            values = VllmPod(
                running=running,
                waiting=waiting,
                kv_usage=kv,
                prompt_tokens=prompt,
                generation_tokens=generated,
                finished={"stop": finished},
                ttft_counts=ttft_counts,
                ttft_sum=ttft_sum,
                responses={"2xx": finished},
            )
            pods.append(({"namespace": ns, "pod": pod}, values))
        return exposition(pods, MODEL_NAME).encode()


class RequestTraffic:
    """vLLM's request counters and TTFT histogram per ready pod, growing with time:
    every ready pod answers ``rate`` requests per second with the TTFT its track is
    given (``ttft["canary"] = 3.0`` makes a slow canary), and a share ``errors[track]``
    of them with an HTTP 500 (counted where vLLM counts it: ``http_requests_total``,
    never in ``request_success_total`` or the TTFT histogram). Pods are listed from the
    API server, so new replicas start reporting when they are ready."""

    def __init__(self, core: Any, namespace: str, rate: float = 5.0) -> None:
        self.core, self.namespace, self.rate = core, namespace, rate
        self.ttft: dict[str, float] = {"stable": 0.2, "canary": 0.2}
        self.errors: dict[str, float] = {"stable": 0.0, "canary": 0.0}
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RequestTraffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        last = time.monotonic()
        while not self.stop.wait(0.5):
            now = time.monotonic()
            dt, last = now - last, now
            try:
                pods = self.core.list_namespaced_pod(self.namespace).items
            except Exception:  # noqa: BLE001 - the API server may restart in a test
                continue
            with self.lock:
                for pod in pods:
                    ready = any(
                        c.type == "Ready" and c.status == "True"
                        for c in (pod.status.conditions or [])
                    )
                    if not ready or pod.metadata.deletion_timestamp:
                        continue
                    track = (pod.metadata.labels or {}).get("distillery.dev/track", "stable")
                    ttft = self.ttft.get(track, 0.2)
                    c = self.counts.setdefault(
                        pod.metadata.name,
                        {"ok": 0.0, "failed": 0.0, "sum": 0.0, "buckets": [0.0] * N_BUCKETS},
                    )
                    n = self.rate * dt
                    failed = n * self.errors.get(track, 0.0)
                    ok = n - failed
                    c["ok"] += ok
                    c["failed"] += failed
                    c["sum"] += ok * ttft
                    c["buckets"][bisect.bisect_left(vllm.TTFT_BUCKETS, ttft)] += ok

    def exposition(self) -> bytes:
        with self.lock:
            items = sorted((pod, dict(c)) for pod, c in self.counts.items())
        pods = [
            (
                {"namespace": self.namespace, "pod": pod},
                VllmPod(
                    finished={"stop": c["ok"]},
                    ttft_counts=list(c["buckets"]),
                    ttft_sum=c["sum"],
                    responses={"2xx": c["ok"], "5xx": c["failed"]},
                ),
            )
            for pod, c in items
        ]
        return exposition(pods, MODEL_NAME).encode()


@contextmanager
def serve(exposition: Callable[[], bytes]) -> Iterator[int]:
    """Serve ``exposition()`` as text format 0.0.4 on a free loopback port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
