"""A test exporter that serves vLLM-named metrics for the pods of a DMD, with the
``namespace`` and ``pod`` labels Prometheus' Kubernetes discovery would attach (scraped
with ``honor_labels``). Classic text exposition (0.0.4), as vLLM serves it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeEngines:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # (namespace, pod) -> (running, waiting, kv_usage)
        self.pods: dict[tuple[str, str], tuple[float, float, float]] = {}

    def set(self, pods: dict[tuple[str, str], tuple[float, float, float]]) -> None:
        with self.lock:
            self.pods = dict(pods)

    def exposition(self) -> bytes:
        lines = []
        with self.lock:
            items = sorted(self.pods.items())
        for name, idx in (
            ("vllm:num_requests_running", 0),
            ("vllm:num_requests_waiting", 1),
            ("vllm:kv_cache_usage_perc", 2),
        ):
            lines.append(f"# TYPE {name} gauge")
            for (ns, pod), values in items:
                lines.append(f'{name}{{namespace="{ns}",pod="{pod}",model_name="m"}} {values[idx]}')
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
