"""Run `distillery run` as a real process against the local cluster, as in production
(minus the pod): its own credentials (so its requests are audited), its own log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from localcluster import Cluster

ROOT = Path(__file__).resolve().parents[2]


class OperatorProcess:
    def __init__(self, cluster: Cluster, namespace: str, workdir: Path, *extra: str):
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
        env["DISTILLERY_RESYNC_INTERVAL_SECONDS"] = "20"
        # As the operator image sets it: fewer malloc arenas, far less RSS with threads.
        env["MALLOC_ARENA_MAX"] = "2"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distillery.cli",
                    "run",
                    "--namespace",
                    self.namespace,
                    "--kubeconfig",
                    str(self.cluster.operator_kubeconfig),
                    "--metrics-port",
                    "0",
                    "--health-port",
                    "0",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.tail()}")
            if "distillery started" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        raise AssertionError(f"operator did not start in {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
