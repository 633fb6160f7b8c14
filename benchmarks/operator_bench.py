"""Operator benchmark on the local cluster: reconcile latency, bursts, idle writes, memory.

Prints a table and writes ``reports/bench-operator.json``. Each figure is compared with
a baseline measured in the same run:

- apply -> children / Ready latency of one DMD, against the API server's own latency to
  create one DMD object (the floor any operator sits on);
- time for N DMDs applied at once to all have children and a written status, against
  the time it takes just to create those N objects;
- operator writes during 60 s idle (target 0), from the API server's audit log;
- operator RSS with N DMDs, against its RSS with none.

Burst DMDs use ``minReplicas: 0`` with a demand query, so they render Deployments of
zero replicas: the run measures the operator, not the scheduler placing 500 pods on a
2-core machine.

Run: ``make bench`` (all benchmarks) or ``.venv/bin/python benchmarks/operator_bench.py``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))
sys.path.insert(0, str(ROOT))

from kubernetes import client, config, watch  # noqa: E402

from distillery.api.types import GROUP, PLURAL, VERSION  # noqa: E402
from distillery.autoscale.inputs import PodInfo  # noqa: E402
from distillery.autoscale.source import (  # noqa: E402
    ENGINE_QUERIES,
    PrometheusOptions,
    PrometheusSource,
)
from distillery.catalog import load_catalog  # noqa: E402
from distillery.cli import MEMORY_REPORT_END  # noqa: E402
from distillery.kube.autoscale_controller import Autoscaler  # noqa: E402
from localcluster import OPERATOR_USER, WRITE_VERBS, Cluster, start  # noqa: E402
from tests.integration.operator_process import OperatorProcess  # noqa: E402
from tests.support.dmds import IDLE_SPEC, dmd  # noqa: E402
from tests.support.fake_cluster import FakeCluster  # noqa: E402

# The figures of the previous release, printed beside each new one (update them when a
# change is measured and committed).
PREVIOUS = ROOT / "benchmarks" / "data" / "bench-operator-previous.json"

SPEC_ONE = {
    "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"},
    "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
    "scaling": {"minReplicas": 1, "maxReplicas": 2},
}


def at_spec(obj: dict[str, Any]) -> bool:
    """Reconciled to what its spec asks: Ready, or (at zero replicas, as the burst DMDs
    are) Ready=False with reason ScaledToZero."""
    return any(
        c["type"] == "Ready" and (c["status"] == "True" or c.get("reason") == "ScaledToZero")
        for c in (obj.get("status") or {}).get("conditions", [])
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU the process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle_cpu(pid: int, limit: float) -> dict[str, Any]:
    """Wait until the process's CPU stops rising (2 s under 0.02 s of CPU), at most
    ``limit`` seconds: its CPU so far and how long that took (None: still busy)."""
    last, still, t0 = cpu_seconds(pid), 0, time.monotonic()
    while still < 4 and time.monotonic() - t0 < limit:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        still = still + 1 if now - last < 0.02 else 0
        last = now
    settled = round(time.monotonic() - t0, 1) if still >= 4 else None
    return {"cpuS": round(last, 2), "settledS": settled}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# The idle window starts after this long without an operator write (bounded): see burst.
SETTLE_QUIET_S = 10.0
SETTLE_LIMIT_S = 300.0


def _operator_write(line: str, ns: str) -> bool:
    """An audit log line that is the operator's write in ``ns`` (as Cluster.operator_writes)."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return bool(
        event.get("user", {}).get("username") == OPERATOR_USER
        and event.get("verb") in WRITE_VERBS
        and event.get("objectRef", {}).get("namespace") == ns
    )


def foreign(i: int) -> client.V1Deployment:
    """Another team's Deployment (no managed-by label), of zero replicas."""
    labels = {"app": f"other-{i}"}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=f"other-{i:04d}", labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=0,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="busybox")]),
            ),
        ),
    )


class DmdProgress:
    """How many DMDs of a namespace have a status for their generation, and how many
    are at spec, from a watch in a thread of its own (one stream, as any controller).
    A watch that fails is raised from the next count read, not hidden."""

    def __init__(self, api: client.ApiClient, ns: str) -> None:
        self._reconciled = self._at_spec = 0
        self._seen: dict[str, tuple[bool, bool]] = {}
        self._stopped = False
        self._error: BaseException | None = None
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        custom = client.CustomObjectsApi(api)
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        version = listed["metadata"]["resourceVersion"]
        stream = self._watch.stream(  # type: ignore[no-untyped-call] # listed: none yet
            custom.list_namespaced_custom_object,
            GROUP, VERSION, ns, PLURAL, resource_version=version,
        )  # fmt: skip
        threading.Thread(target=self._run, args=(stream,), daemon=True).start()

    def _run(self, stream: Any) -> None:
        try:
            for event in stream:
                obj = event["object"]
                meta = obj.get("metadata") or {}
                status = obj.get("status") or {}
                state = (status.get("observedGeneration") == meta.get("generation"), at_spec(obj))
                name = str(meta.get("name"))
                was = self._seen.get(name, (False, False))
                self._seen[name] = state
                self._reconciled += state[0] - was[0]
                self._at_spec += state[1] - was[1]
        except Exception as exc:  # noqa: BLE001 - reported by the next read, unless stopping
            if not self._stopped:
                self._error = exc

    def _checked(self, value: int) -> int:
        if self._error is not None:
            raise RuntimeError(f"the benchmark's DMD watch failed: {self._error!r}")
        return value

    @property
    def reconciled(self) -> int:
        return self._checked(self._reconciled)

    @property
    def at_spec(self) -> int:
        return self._checked(self._at_spec)

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()  # type: ignore[no-untyped-call]


class Bench:
    def __init__(self, cluster: Cluster, workdir: Path, profile: bool = False):
        self.cluster = cluster
        self.profile = profile
        # Tracing every allocation from the first import makes the start slow.
        self.start_s = 600.0 if profile else 60.0
        self.api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(cluster.kubeconfig)
        )
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.workdir = workdir

    def namespace(self, name: str) -> str:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def wait(self, check: Any, timeout: float = 300, interval: float = 0.02) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if check():
                return time.monotonic() - t0
            time.sleep(interval)
        raise TimeoutError("benchmark condition not reached")

    def control_plane(self) -> dict[str, int]:
        """The processes whose CPU a burst competes with, by name."""
        wanted = ("kube-apiserver", "etcd", "kube-controller-manager")
        return {n: pid for n, pid in self.cluster.pids.items() if n in wanted}

    def deployments(self, ns: str) -> list[dict[str, Any]]:
        """The Deployments of ``ns`` as JSON (decoding thousands into the client's
        models would cost the benchmark's CPU more than the listing)."""
        reply: Any = self.apps.list_namespaced_deployment(ns, _preload_content=False)
        return list(json.loads(reply.data)["items"])

    def all_observed(self, ns: str, count: int) -> bool:
        """All ``count`` Deployments of ``ns`` have been seen by their controller."""
        items = self.deployments(ns)
        observed = sum(1 for d in items if (d.get("status") or {}).get("observedGeneration"))
        return observed >= count

    def single_latency(self, runs: int) -> dict[str, Any]:
        ns = self.namespace("bench-single")
        op = OperatorProcess(self.cluster, ns, self.workdir / "op-single").start(self.start_s)
        try:
            create_s, children_s, ready_s = [], [], []
            for i in range(runs):
                name = f"one-{i}"
                t0 = time.monotonic()
                self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, dmd(name, SPEC_ONE)
                )
                create_s.append(time.monotonic() - t0)

                def has_children(n: str = name) -> bool:
                    try:
                        self.apps.read_namespaced_deployment(n, ns)
                        self.core.read_namespaced_service(n, ns)
                        return True
                    except client.exceptions.ApiException:
                        return False

                def ready(n: str = name) -> bool:
                    obj: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                        GROUP, VERSION, ns, PLURAL, n
                    )
                    return at_spec(obj)

                self.wait(has_children, 60)
                children_s.append(time.monotonic() - t0)
                self.wait(ready, 120)
                ready_s.append(time.monotonic() - t0)
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            return {
                "runs": runs,
                "baselineCreateP50S": round(statistics.median(create_s), 4),
                "applyToChildrenP50S": round(statistics.median(children_s), 4),
                "applyToChildrenP99S": round(pct(children_s, 99), 4),
                "applyToReadyP50S": round(statistics.median(ready_s), 4),
                "applyToReadyP99S": round(pct(ready_s, 99), 4),
                "target": {"applyToChildrenP99S": 1.0},
            }
        finally:
            op.stop()

    def settle(self, ns: str, quiet: float, limit: float) -> float:
        """Seconds until ``quiet`` seconds pass without an operator write in ``ns`` (at
        most ``limit``)."""
        t0 = since = time.monotonic()
        audit = self.cluster.state_dir / "logs" / "audit.log"
        with audit.open() as log:
            log.seek(0, 2)  # only what comes from now on; read as it grows
            while time.monotonic() - t0 < limit:
                time.sleep(1.0)
                if any(_operator_write(line, ns) for line in log.readlines()):
                    since = time.monotonic()
                elif time.monotonic() - since >= quiet:
                    break
        return time.monotonic() - t0

    def foreign(self, count: int) -> dict[str, Any]:
        """An operator started in a namespace that holds ``count`` Deployments of other
        teams (and none of its own), against one started in an empty namespace: what
        other workloads cost it (nothing, when its watches are filtered server-side)."""

        def started_in(ns: str) -> dict[str, Any]:
            op = OperatorProcess(self.cluster, ns, self.workdir / f"op-{ns}")
            # Settled: its first listings are worked off once its CPU stops rising.
            return self.settled_start(op, 300)

        empty = started_in(self.namespace(f"bench-empty-{count}"))
        ns = self.namespace(f"bench-foreign-{count}")
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(
                pool.map(
                    lambda i: self.apps.create_namespaced_deployment(ns, foreign(i)), range(count)
                )
            )
        # The controller-manager syncs each new Deployment at its own client rate, minutes
        # for thousands: had it not, its queue would hold back the bursts measured next
        # (their Ready waits on the same controller).
        waited = self.wait(lambda: self.all_observed(ns, count), 900, interval=2.0)
        crowded = started_in(ns)
        return {
            "controllerManagerCaughtUpS": round(waited, 1),
            "foreignDeployments": count,
            "rssMiB": crowded["rssMiB"],
            "startCpuS": crowded["cpuS"],
            "settledS": crowded["settledS"],
            "baselineEmptyNamespace": empty,
        }

    def burst(self, count: int, idle_seconds: float) -> dict[str, Any]:
        ns = self.namespace(f"bench-burst-{count}")
        op = OperatorProcess(self.cluster, ns, self.workdir / f"op-burst-{count}").start(
            self.start_s
        )
        try:
            assert op.proc is not None
            rss_idle = rss_mib(op.proc.pid)
            cpu_idle = cpu_seconds(op.proc.pid)
            # Watched, not polled: listing 2,000 objects every few milliseconds would
            # load the API server the burst is measured on.
            progress = DmdProgress(self.api, ns)
            plane_before = {n: cpu_seconds(pid) for n, pid in self.control_plane().items()}
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(
                    pool.map(
                        lambda i: self.custom.create_namespaced_custom_object(
                            GROUP, VERSION, ns, PLURAL, dmd(f"dmd-{i:04d}", IDLE_SPEC)
                        ),
                        range(count),
                    )
                )
            created = time.monotonic() - t0

            self.wait(lambda: progress.reconciled >= count, 900)
            self.wait(lambda: len(self.deployments(ns)) >= count, 60, interval=1.0)
            reconciled = time.monotonic() - t0
            cpu_to_reconciled = cpu_seconds(op.proc.pid) - cpu_idle
            plane_to_reconciled = {
                name: round(cpu_seconds(pid) - plane_before[name], 1)
                for name, pid in self.control_plane().items()
            }
            self.wait(lambda: progress.at_spec >= count, 900)
            ready = time.monotonic() - t0
            progress.stop()
            # The operator's own work for the burst, which the machine's other load
            # (the API server's share of two cores) does not stretch as it does time.
            cpu_to_ready = cpu_seconds(op.proc.pid) - cpu_idle
            # Ready is written before the last pod events are worked off (a large burst
            # leaves a queue): the idle window starts once the writes stop, so it counts
            # steady-state writes, not the tail of the burst. How long that took is
            # reported; a loop that never stops shows as idle writes all the same.
            settled = self.settle(ns, quiet=SETTLE_QUIET_S, limit=SETTLE_LIMIT_S)
            writes_before = len(self.cluster.operator_writes(ns))
            time.sleep(idle_seconds)
            idle_writes = len(self.cluster.operator_writes(ns)) - writes_before
            figures = {
                "dmds": count,
                "baselineCreateAllS": round(created, 3),
                "allReconciledS": round(reconciled, 3),
                "allReadyS": round(ready, 3),
                "operatorCpuToReconciledS": round(cpu_to_reconciled, 1),
                "operatorCpuToReadyS": round(cpu_to_ready, 1),
                # What the rest of the machine spent meanwhile: the API server's share
                # of two cores is what bounds allReconciledS.
                "controlPlaneCpuToReconciledS": plane_to_reconciled,
                "ratioToCreate": round(reconciled / created, 2),
                "operatorWritesDuringBurst": writes_before,
                "settledAfterReadyS": round(settled, 1),
                "idleSeconds": idle_seconds,
                "idleWrites": idle_writes,
                "rssIdleMiB": round(rss_idle, 1),
                "rssWithDmdsMiB": round(rss_mib(op.proc.pid), 1),
                "pythonHeap": self.memory_report(op, count),
                "target": {
                    # The target: 2,000 in 120 s (none set for other sizes).
                    "allReconciledS": 120 if count == 2000 else None,
                    "idleWrites": 0,
                    "rssWithDmdsMiB": 150,
                },
            }
        finally:
            op.stop()
        figures["restart"] = self.restart(op, ns)
        return figures

    def restart(self, op: OperatorProcess, ns: str) -> dict[str, Any]:
        """Start the operator again over the fleet it built (what an upgrade or a
        failover does): how long until it is idle (from its "started" log line), its
        CPU and RSS then, and its writes (0: nothing to change)."""
        writes_before = len(self.cluster.operator_writes(ns))
        figures = self.settled_start(op, 600)
        figures["writes"] = len(self.cluster.operator_writes(ns)) - writes_before
        return figures

    def settled_start(self, op: OperatorProcess, limit: float) -> dict[str, Any]:
        """Start ``op``, wait (at most ``limit`` s) until its CPU stops rising, and stop
        it: its CPU and the seconds that took (:func:`settle_cpu`), and its RSS then."""
        op.start(self.start_s)
        try:
            assert op.proc is not None
            return {**settle_cpu(op.proc.pid, limit), "rssMiB": round(rss_mib(op.proc.pid), 1)}
        finally:
            op.stop()

    def memory_report(self, op: OperatorProcess, count: int) -> dict[str, Any]:
        """Ask the operator where its memory is (``kill -USR2``): the Python allocator's
        arenas, and with ``--profile`` the allocating call stacks; save the whole answer
        (``reports/operator-memory-N.txt``) and return the arenas' figures in MiB: live
        blocks, free blocks in arenas kept, and the arenas' total. RSS beyond the arenas
        is memory outside Python's allocator (large objects, C libraries, stacks)."""
        assert op.proc is not None
        before = len(op.log.read_text(errors="replace"))
        os.kill(op.proc.pid, signal.SIGUSR2)
        # A tracemalloc snapshot of a large heap takes minutes.
        deadline = time.monotonic() + 600
        text = ""
        while time.monotonic() < deadline:
            text = op.log.read_text(errors="replace")[before:]
            if MEMORY_REPORT_END in text:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"no memory report from the operator; its log ends:\n{text[-2000:]}")
        out = ROOT / "reports" / f"operator-memory-{count}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"memory report at {count} DMDs: {out}", flush=True)
        return allocator_figures(text)


def allocator_figures(text: str) -> dict[str, Any]:
    """The live, free and total MiB of Python's arenas (``sys._debugmallocstats()``
    output) and the C heap's figures the operator logs after them."""
    wanted = {
        "# bytes in allocated blocks": "liveBlocksMiB",
        "# bytes in available blocks": "freeBlocksMiB",
        "Total": "arenasMiB",
    }
    figures: dict[str, Any] = {}
    for line in text.splitlines():
        if "C heap: " in line:
            figures["cHeap"] = ast.literal_eval(line.split("C heap: ", 1)[1])
            continue
        label, _, value = line.rpartition("=")
        name = wanted.get(label.strip())
        if name and name not in figures:
            figures[name] = round(int(value.strip().replace(",", "")) / 2**20, 1)
    return figures


class SyntheticPrometheus(PrometheusSource):
    """The real Prometheus source (its queries, parsing and grouping by pod) answered with
    one sample per pod for every query, so a pass costs what it would but the network."""

    def __init__(self, pods: list[tuple[str, str]]):
        super().__init__(PrometheusOptions(url="http://127.0.0.1:9"))
        self.pods = pods
        q = ENGINE_QUERIES["vllm"]
        self.values = {
            q.running: 20.0,
            q.waiting: 0.0,
            q.kv_usage: 0.35,
            q.prompt_tokens_rate: 9000.0,
            q.completions_rate: 3.0,
            q.generation_tokens_rate: 2500.0,
            q.computed_prompt_tokens_rate: 8000.0,
            q.ttft_sum: 0.9,
        }
        self.buckets = q.ttft_buckets

    def _query(self, promql: str) -> list[dict[str, Any]]:
        self.queries += 1
        now = time.time()
        if promql == self.buckets:
            les = ["0.25", "0.5", "1.0", "2.5", "+Inf"]
            counts = [0.5, 2.0, 2.8, 3.0, 3.0]
            return [
                {"metric": {"namespace": ns, "pod": pod, "le": le}, "value": [now, str(c)]}
                for ns, pod in self.pods
                for le, c in zip(les, counts, strict=True)
            ]
        value = self.values.get(promql, now)  # the freshness query: the newest sample
        return [
            {"metric": {"namespace": ns, "pod": pod}, "value": [now, str(value)]}
            for ns, pod in self.pods
        ]


def autoscale_pass(count: int) -> dict[str, Any]:
    """CPU of one autoscaler pass over ``count`` DMDs of two ready replicas each: the first
    (plans made) and a steady one (plans cached), and the Prometheus queries per pass."""
    import asyncio

    spec = {**SPEC_ONE, "scaling": {"minReplicas": 1, "maxReplicas": 8}, "replicas": 2}
    bodies = [
        dmd(f"dmd-{i:04d}", spec, namespace="bench", uid=f"uid-{i}", generation=1)
        for i in range(count)
    ]
    pods = {
        ("bench", b["metadata"]["name"]): [
            PodInfo(name=f"{b['metadata']['name']}-{r}", ready=True) for r in range(2)
        ]
        for b in bodies
    }
    source = SyntheticPrometheus([(ns, p.name) for (ns, _), ps in pods.items() for p in ps])
    cluster = FakeCluster()
    autoscaler = Autoscaler(kube=cluster, catalog=load_catalog(), source=source)
    out: dict[str, Any] = {"dmds": count}
    for label in ("firstPass", "steadyPass"):
        queries, writes = source.queries, len(cluster.writes())
        t0 = time.process_time()
        asyncio.run(autoscaler.run_pass(bodies, pods))
        out[f"{label}CpuS"] = round(time.process_time() - t0, 3)
        out[f"{label}Queries"] = source.queries - queries
        out[f"{label}Writes"] = len(cluster.writes()) - writes
        # The next pass sees what this one wrote, as the watch would show it.
        for b in bodies:
            key = ("bench", b["metadata"]["name"])
            b["status"] = cluster.status.get(key, {})
            b["spec"]["replicas"] = cluster.replicas.get(key, b["spec"]["replicas"])
    out["target"] = {"steadyPassCpuS": 2.0}
    return out


def beside(now: float, before: float | None, unit: str = "") -> str:
    return f"{now}{unit}" + (f" (was {before}{unit})" if before is not None else "")


def recorded(
    report: dict[str, Any],
    previous: dict[str, Any],
    section: str,
    count: int,
    figures: dict[str, Any],
) -> dict[str, Any]:
    """Add ``figures`` for ``count`` DMDs to ``report[section]`` with the previous
    release's beside them; return the previous release's."""
    was: dict[str, Any] = previous.get(section, {}).get(str(count), {})
    report.setdefault(section, []).append({**figures, "previous": was})
    return was


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--bursts", type=int, nargs="*", default=[500, 2000])
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument(
        "--foreign",
        type=int,
        default=2000,
        help="Deployments of other teams in the namespace of an operator started beside "
        "them (0: skip)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=12,
        default=0,
        metavar="FRAMES",
        help="run the operator with tracemalloc (FRAMES frames a stack, 12 if not given; "
        "1-3 is fast enough for 2,000 DMDs) and save where its memory is held after each "
        "burst (reports/operator-memory-N.txt); its RSS and timings are then not comparable",
    )
    parser.add_argument("-o", "--output", default=str(ROOT / "reports" / "bench-operator.json"))
    args = parser.parse_args()
    workdir = ROOT / ".cache" / "bench"
    report: dict[str, Any] = {}
    previous: dict[str, Any] = json.loads(PREVIOUS.read_text())
    report["previousRelease"] = previous.get("measured")
    cluster = start(state_dir=workdir / "cluster", quiet=True)
    try:
        cluster.install_crds()
        if args.profile:
            os.environ["PYTHONTRACEMALLOC"] = str(args.profile)
        bench = Bench(cluster, workdir, profile=bool(args.profile))
        report["machine"] = {"cores": os.cpu_count()}
        report["single"] = bench.single_latency(args.runs)
        print(
            f"single DMD: apply->children p50 {report['single']['applyToChildrenP50S']}s "
            f"p99 {report['single']['applyToChildrenP99S']}s; apply->Ready p50 "
            f"{report['single']['applyToReadyP50S']}s (API create p50 "
            f"{report['single']['baselineCreateP50S']}s)",
            flush=True,
        )
        if args.foreign:
            f = bench.foreign(args.foreign)
            report["foreign"] = f
            print(
                f"started among {f['foreignDeployments']} other Deployments: RSS "
                f"{f['rssMiB']} MiB, CPU {f['startCpuS']}s, settled after "
                f"{f['settledS']}s (in an empty namespace: "
                f"{f['baselineEmptyNamespace']['rssMiB']} MiB, "
                f"{f['baselineEmptyNamespace']['cpuS']}s); the controller-manager took "
                f"{f['controllerManagerCaughtUpS']}s to see them all",
                flush=True,
            )
        for count in args.bursts:
            r = bench.burst(count, args.idle)
            was = recorded(report, previous, "bursts", count, r)
            print(
                f"{count} DMDs at once: all reconciled in "
                f"{beside(r['allReconciledS'], was.get('allReconciledS'), 's')}, Ready in "
                f"{beside(r['allReadyS'], was.get('allReadyS'), 's')} "
                f"(operator CPU to reconciled {r['operatorCpuToReconciledS']}s, to Ready "
                f"{beside(r['operatorCpuToReadyS'], was.get('operatorCpuToReadyS'), 's')}; "
                f"control plane CPU to reconciled {r['controlPlaneCpuToReconciledS']}) "
                f"(creating them took {r['baselineCreateAllS']}s, x{r['ratioToCreate']}); "
                f"idle {args.idle:.0f}s writes {beside(r['idleWrites'], was.get('idleWrites'))}; "
                f"RSS {r['rssIdleMiB']} -> "
                f"{beside(r['rssWithDmdsMiB'], was.get('rssWithDmdsMiB'), ' MiB')} "
                f"(heap {r['pythonHeap']}); restarted over them: {r['restart']}",
                flush=True,
            )
    finally:
        cluster.stop()
    for count in args.bursts:
        a = autoscale_pass(count)
        was = recorded(report, previous, "autoscalePass", count, a)
        print(
            f"autoscaler pass over {count} DMDs: first "
            f"{beside(a['firstPassCpuS'], was.get('firstPassCpuS'), 's')} CPU, steady "
            f"{beside(a['steadyPassCpuS'], was.get('steadyPassCpuS'), 's')} CPU, "
            f"{a['steadyPassQueries']} Prometheus queries, {a['steadyPassWrites']} writes",
            flush=True,
        )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
