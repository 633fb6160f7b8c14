"""A test exporter that serves vLLM-named metrics for the pods of a DMD, with the
``namespace`` and ``pod`` labels Prometheus' Kubernetes discovery would attach (scraped
with ``honor_labels``). Classic text exposition (0.0.4), as vLLM serves it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeEngines:
    """Gauges set by the test, and the counters a vLLM pod grows while it runs them:
    every running sequence makes ``tokens_per_sequence`` output tokens a second and
    finishes after ``sequence_seconds`` (so a pod finishes running / sequence_seconds
    requests a second, each with ``prompt_tokens`` of prompt)."""

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

    def exposition(self) -> bytes:
        lines = []
        with self.lock:
            self._advance()
            items = sorted(self.pods.items())
            counters = {k: list(v) for k, v in self.counters.items()}
        for name, idx in (
            ("vllm:num_requests_running", 0),
            ("vllm:num_requests_waiting", 1),
            ("vllm:kv_cache_usage_perc", 2),
        ):
            lines.append(f"# TYPE {name} gauge")
            for (ns, pod), values in items:
                lines.append(f'{name}{{namespace="{ns}",pod="{pod}",model_name="m"}} {values[idx]}')
        for name, idx, extra in (
            ("vllm:generation_tokens_total", 0, ""),
            ("vllm:request_success_total", 1, ',finished_reason="stop"'),
            ("vllm:prompt_tokens_total", 2, ""),
        ):
            lines.append(f"# TYPE {name} counter")
            for (ns, pod), _ in items:
                value = counters.get((ns, pod), [0.0, 0.0, 0.0])[idx]
                labels = f'namespace="{ns}",pod="{pod}",model_name="m"{extra}'
                lines.append(f"{name}{{{labels}}} {value:.3f}")
        return ("\n".join(lines) + "\n").encode()


TTFT_BUCKETS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class RequestTraffic:
    """Finished-request counters and a TTFT histogram per ready pod, as vLLM exports
    them, growing with time: every ready pod serves ``rate`` requests per second with
    the TTFT its track is given (``ttft["canary"] = 3.0`` makes a slow canary). Pods are
    listed from the API server, so new replicas start reporting when they are ready."""

    def __init__(self, core: Any, namespace: str, rate: float = 5.0) -> None:
        self.core, self.namespace, self.rate = core, namespace, rate
        self.ttft: dict[str, float] = {"stable": 0.2, "canary": 0.2}
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
                        {"n": 0.0, "sum": 0.0, "le": dict.fromkeys(TTFT_BUCKETS, 0.0)},
                    )
                    n = self.rate * dt
                    c["n"] += n
                    c["sum"] += n * ttft
                    for le in TTFT_BUCKETS:
                        if ttft <= le:
                            c["le"][le] += n

    def exposition(self) -> bytes:
        ns = self.namespace
        lines = [
            "# TYPE vllm:request_success_total counter",
            "# TYPE vllm:time_to_first_token_seconds histogram",
        ]
        with self.lock:
            items = sorted(self.counts.items())
            for pod, c in items:
                labels = f'namespace="{ns}",pod="{pod}",model_name="m"'
                lines.append(
                    f'vllm:request_success_total{{{labels},finished_reason="stop"}} {c["n"]}'
                )
                for le, v in c["le"].items():
                    lines.append(
                        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{le}"}} {v}'
                    )
                lines.append(
                    f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} {c["n"]}'
                )
                lines.append(f"vllm:time_to_first_token_seconds_count{{{labels}}} {c['n']}")
                lines.append(f"vllm:time_to_first_token_seconds_sum{{{labels}}} {c['sum']}")
        return ("\n".join(lines) + "\n").encode()


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
