"""A real Prometheus server for tests and the demo, on a free loopback port.

Debian's ``prometheus`` package provides the binary; this module writes a config with
the scrape targets given (static, or file-based service discovery that the emulated
fleet rewrites as pods come and go), starts it, waits for readiness, and answers PromQL
through the HTTP API. Stopping it frees the port; its TSDB lives in a temporary folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcluster import background, free_port, terminate


@dataclass
class Prometheus:
    workdir: Path
    scrape_interval: str = "1s"
    static_targets: list[str] = field(default_factory=list)
    file_sd: Path | None = None
    honor_labels: bool = False
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        job: dict[str, Any] = {
            "job_name": "engines",
            "metrics_path": "/metrics",
            "honor_labels": self.honor_labels,
        }
        if self.static_targets:
            job["static_configs"] = [{"targets": self.static_targets}]
        if self.file_sd is not None:
            job["file_sd_configs"] = [{"files": [str(self.file_sd)], "refresh_interval": "1s"}]
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [job],
        }

    def start(self, timeout: float = 60.0) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run hack/install-deps.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config()))
        self.port = self.port or free_port()
        argv = [
            binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        log = self.workdir / "prometheus.log"
        self.proc = background(argv, log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.workdir / "prometheus.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout}s")

    def stop(self) -> None:
        terminate(self.proc, grace=15)
        self.proc = None

    def query(self, promql: str) -> list[dict[str, Any]]:
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=5) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return list(body["data"]["result"])
