"""The closed loop the e2e tests run: a real Prometheus scraping the emulated fleet's
pods (file service discovery; at the pods' own addresses when the cluster has its pod
network), the fleet's front door, and the operator autoscaling
from that Prometheus every second."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from localcluster import Cluster, background, fleet_argv, free_port, terminate
from localprom import Prometheus
from tests.integration.operator_process import OperatorProcess

# The fleet runs this many times faster than wall time in the e2e tests.
TIME_SCALE = 10.0


@dataclass(frozen=True)
class Loop:
    prometheus: Prometheus
    door: int  # the front door's port on 127.0.0.1
    operator: OperatorProcess
    fleet_log: Path


@contextmanager
def closed_loop(
    cluster: Cluster,
    namespace: str,
    workdir: Path,
    prometheus: Callable[..., Prometheus],
    time_scale: float,
) -> Iterator[Loop]:
    """Start Prometheus, the fleet (``time_scale`` times faster than wall time) and the
    operator; stop the operator and the fleet on the way out."""
    sd = workdir / "targets.json"
    sd.write_text("[]")
    prom = prometheus(file_sd=sd)
    door = free_port()
    fleet_log = workdir / "fleet.log"
    argv = fleet_argv(cluster.kubeconfig, namespace, sd, door, time_scale, cluster.pod_netns)
    fleet = background(argv, fleet_log)
    op = OperatorProcess(
        cluster, namespace, workdir / "op",
        "--prometheus-url", prom.url, "--autoscale-interval", "1",
    )  # fmt: skip
    try:
        op.start()
        yield Loop(prom, door, op, fleet_log)
    finally:
        op.stop()
        terminate(fleet)
