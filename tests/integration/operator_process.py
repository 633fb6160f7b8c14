"""Run `distillery run` as a real process against the local cluster, as in production
(minus the pod): its own credentials (so its requests are audited), its own log."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from distillery.cli import build_parser
from distillery.settings import Settings
from localcluster import Cluster, background, operator_argv, operator_env, terminate
from tests.integration.waits import Bounds

ROOT = Path(__file__).resolve().parents[2]
# Short enough that a missed watch event costs a test seconds, not the default 5 min.
RESYNC_SECONDS = 20


def elected(
    identity: str,
    lease_namespace: str,
    lease_id: str = "distillery",
    timings: tuple[float, float, float] | None = None,
) -> tuple[str, ...]:
    """The flags of an instance that acts only while it holds the Lease ``lease_id``;
    ``timings`` are (lease, renew deadline, retry period) seconds, else the defaults."""
    flags = [
        "--identity", identity,
        "--leader-election",
        "--leader-election-id", lease_id,
        "--leader-election-namespace", lease_namespace,
    ]  # fmt: skip
    if timings is not None:
        for name, seconds in zip(("lease", "renew-deadline", "retry-period"), timings, strict=True):
            flags += [f"--leader-election-{name}-seconds", f"{seconds:g}"]
    return tuple(flags)


class OperatorProcess:
    def __init__(self, cluster: Cluster, namespace: str, workdir: Path, *extra: str):
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def settings(self) -> Settings:
        """The settings this process runs with, parsed by the CLI's own parser."""
        args = build_parser().parse_args(["run", *self.extra])
        overrides = {name: getattr(args, name) for name in Settings.model_fields}
        return Settings.from_env(
            {"DISTILLERY_RESYNC_INTERVAL_SECONDS": str(RESYNC_SECONDS)}, **overrides
        )

    @property
    def bounds(self) -> Bounds:
        """How long a test may wait on what this process does."""
        return Bounds(self.settings)

    @property
    def log(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def start(self, timeout: float = 60.0, until: str = "distillery started") -> OperatorProcess:
        """Start the process; return once its log says ``until`` (a standby of leader
        election never starts kopf: wait for "standing by")."""
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = operator_env(DISTILLERY_RESYNC_INTERVAL_SECONDS=str(RESYNC_SECONDS))
        argv = operator_argv(self.cluster.operator_kubeconfig, self.namespace, *self.extra)
        self.proc = background(argv, self.log, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.tail()}")
            if until in self.log.read_text(errors="replace"):
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
        terminate(self.proc)
        self.proc = None
