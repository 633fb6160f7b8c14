"""A model hub on 127.0.0.1 that answers the two calls a cache fill makes, the way the
Hugging Face Hub does: the revision's file listing (``/api/models/<repo>/revision/<rev>``)
and file downloads (``/<repo>/resolve/<rev>/<path>``) with range requests, redirected
to a storage path as the Hub redirects to its CDN.

Knobs for hostile cases: a token it requires, and downloads cut off after some bytes
(the first ``cut_after_attempts`` times), to prove a retry resumes and no marker is
written before every byte is there; and a gate that holds every download until it is
set, so a test can look at a fill under way.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeHub:
    repos: dict[tuple[str, str], dict[str, bytes]]  # (repo, revision) -> path -> content
    token: str | None = None
    cut_after_bytes: int | None = None
    cut_after_attempts: int = 0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # path, range, auth
    # Downloads wait until it is set: a test sees the state while a fill is under way.
    gate: threading.Event | None = None
    _cuts: int = 0
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def downloads(self) -> list[tuple[str, str, str | None]]:
        """The requests that fetched file content (from the storage a resolve redirects
        to): path, range, authorization."""
        return [r for r in self.requests if r[0].startswith("/blobs/")]

    def _authorized(self, header: str | None) -> bool:
        return self.token is None or header == f"Bearer {self.token}"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        auth = h.headers.get("Authorization")
        self.requests.append((h.path, h.headers.get("Range") or "", auth))
        listing = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/?]+)\?blobs=true", h.path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", h.path)
        blob = re.fullmatch(r"/blobs/([^/]+/[^/]+)/([^/]+)/(.+)", h.path)
        if (listing or resolve) and not self._authorized(auth):
            return self._send(h, 401, b'{"error": "unauthorized"}')
        if listing:
            files = self.repos.get((listing.group(1), listing.group(2)))
            if files is None:
                return self._send(h, 404, b'{"error": "not found"}')
            body = {
                "sha": "0123abcd" * 5,
                "siblings": [{"rfilename": p, "size": len(c)} for p, c in sorted(files.items())],
            }
            return self._send(h, 200, json.dumps(body).encode())
        if resolve:
            repo, rev, path = resolve.groups()
            if path not in self.repos.get((repo, rev), {}):
                return self._send(h, 404, b"")
            h.send_response(302)
            h.send_header("Location", f"{self.endpoint}/blobs/{repo}/{rev}/{path}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if blob:
            if auth is not None:  # the token must not follow a redirect off the Hub
                return self._send(h, 400, b"token forwarded to storage")
            repo, rev, path = blob.groups()
            if self.gate is not None:
                self.gate.wait(timeout=600)
            content = self.repos[(repo, rev)][path]
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
            if m:
                start = int(m.group(1))
                if start >= len(content):
                    return self._send(h, 416, b"")
            chunk = content[start:]
            cut = (
                self.cut_after_bytes is not None
                and len(chunk) > self.cut_after_bytes
                and self._cuts < self.cut_after_attempts
            )
            h.send_response(206 if m else 200)
            h.send_header("Content-Length", str(len(chunk)))
            h.end_headers()
            if cut:
                self._cuts += 1
                h.wfile.write(chunk[: self.cut_after_bytes])
                h.wfile.flush()
                h.close_connection = True
                return None
            h.wfile.write(chunk)
            return None
        return self._send(h, 404, b"")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: bytes) -> None:
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@contextmanager
def serve_hub(hub: FakeHub) -> Iterator[FakeHub]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hub.handle(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
