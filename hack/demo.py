#!/usr/bin/env python3
"""`make demo`: the closed loop on the local cluster, unattended, in about five minutes.

1. the local control plane with fake GPU nodes (or the cluster in $KUBECONFIG);
2. the CRD, real Prometheus (file service discovery), the emulated vLLM fleet
   (`hack/fleet.py`) and the operator (`distillery run`);
3. a DistilledModelDeployment of DeepSeek-R1-Distill-Qwen-7B on H100s;
4. 3 hours of the ServeGen DeepSeek-R1 day (01:30-04:30, the night peak) replayed over
   HTTP through the front door of the fleet, compressed 36x;
5. a live status line, then a summary (replicas over time, GPU-hours, cost, SLO
   attainment, scale events) and a PNG plot in reports/demo.png;
6. everything stopped and removed.

Time compression: the physics of the fleet run 36x faster than wall time, and the DMD's time
settings are divided by 36 too (`startupSeconds`, the scale-down window); the autoscaler
decides every second of wall time (36 s of trace time). Counters and TTFT are exported
in trace units, so the numbers read as they would at real speed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))
sys.path.insert(0, str(ROOT))

from distillery.simulate.workload import Request, load  # noqa: E402
from localcluster import (  # noqa: E402
    BIN_DIR,
    Cluster,
    ClusterError,
    background,
    fleet_argv,
    free_port,
    operator_argv,
    operator_env,
    start,
    stop,
    terminate,
)
from localprom import Prometheus  # noqa: E402
from replay import Result, replay  # noqa: E402

TIME_SCALE = 36.0
SEGMENT = (1.5 * 3600, 4.5 * 3600)
RATE_SCALE = 0.012
SLO_TTFT = 2.0
NAMESPACE = "demo"
DMD = "r1-qwen-7b"
REPORTS = ROOT / "reports"
TRACES = ROOT / "benchmarks" / "traces" / "servegen-deepseek-r1"


def dmd_manifest(startup_wall: float) -> dict[str, Any]:
    return {
        "apiVersion": "distillery.dev/v1alpha1",
        "kind": "DistilledModelDeployment",
        "metadata": {"name": DMD, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "quantization": "none"},
            # A latency-first deployment: few sequences per replica, so load spreads wide.
            "serving": {"maxModelLen": 32768, "maxConcurrency": 8},
            "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": 12,
                "slo": {"ttftSeconds": SLO_TTFT, "percentile": 95},
                # Compressed like the trace: the real values divided by TIME_SCALE.
                "startupSeconds": max(1, round(startup_wall)),
                "scaleDown": {"stabilizationSeconds": max(1, round(300 / TIME_SCALE))},
            },
        },
    }


def segment() -> list[Request]:
    reqs = load(TRACES, "servegen", rate_scale=RATE_SCALE, seed=7)
    lo, hi = SEGMENT
    return [
        Request(r.arrival - lo, r.prompt_tokens, r.output_tokens)
        for r in reqs
        if lo <= r.arrival < hi
    ]


class Watcher:
    """Samples the DMD every second: replicas over (trace) time, decisions."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.samples: list[tuple[float, int, int]] = []
        self.status: dict[str, Any] = {}
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def get(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(BIN_DIR / "kubectl"), "get", "dmd", DMD, "-n", NAMESPACE, "-o", "json"],
            env=self.env,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def run(self) -> None:
        while not self.stop.is_set():
            obj = self.get()
            if obj:
                self.status = obj
                t = (time.monotonic() - self.t0) * TIME_SCALE
                self.samples.append(
                    (
                        t,
                        int(obj["spec"].get("replicas") or 1),
                        int((obj.get("status") or {}).get("readyReplicas") or 0),
                    )
                )
            self.stop.wait(1.0)


def summarize(results: list[Result], watcher: Watcher, price: float, gpus: int) -> str:
    ok = [r for r in results if r.ttft is not None]
    met = sum(1 for r in ok if r.ttft is not None and r.ttft <= SLO_TTFT)
    ttfts = sorted(r.ttft for r in ok if r.ttft is not None)

    def pct(q: float) -> float:
        return ttfts[min(len(ttfts) - 1, int(q / 100 * len(ttfts)))] if ttfts else float("nan")

    replica_seconds = 0.0
    for (t0, n, _), (t1, _, _) in zip(watcher.samples, watcher.samples[1:], strict=False):
        replica_seconds += n * (t1 - t0)
    decisions = ((watcher.status.get("status") or {}).get("autoscaling") or {}).get(
        "lastDecisions"
    ) or []
    ups = sum(1 for d in decisions if d["to"] > d["from"])
    downs = sum(1 for d in decisions if d["to"] < d["from"])
    peak = max((n for _, n, _ in watcher.samples), default=0)
    hours = replica_seconds / 3600
    lines = [
        "",
        "=== distillery demo summary ===",
        f"trace: ServeGen DeepSeek-R1, {SEGMENT[0] / 3600:.1f}h-{SEGMENT[1] / 3600:.1f}h of the "
        f"day, rate x{RATE_SCALE}, compressed x{TIME_SCALE:g}; {len(results)} requests over HTTP",
        f"model: DeepSeek-R1-Distill-Qwen-7B, {gpus}x nvidia-h100-80gb per replica",
        f"replicas: 1 -> peak {peak}; scale-ups {ups}, scale-downs {downs} "
        f"(last {len(decisions)} decisions in status.autoscaling)",
        f"GPU-hours: {hours * gpus:.2f}; cost: {hours * price:.2f} USD (trace time)",
        f"SLO (TTFT <= {SLO_TTFT:g}s): {100 * met / max(1, len(results)):.2f}% of requests; "
        f"TTFT p50 {pct(50):.2f}s p95 {pct(95):.2f}s p99 {pct(99):.2f}s; "
        f"failed {len(results) - len(ok)}",
    ]
    for d in decisions[-6:]:
        lines.append(
            f"  decision {d['time']}: {d['from']} -> {d['to']} ({d['reason']}; "
            f"demand {d['inputs'].get('demandReplicas', 0):.2f} replicas, "
            f"waiting {d['inputs'].get('waiting', 0):.0f})"
        )
    return "\n".join(lines)


def plot(results: list[Result], watcher: Watcher, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    bucket = 300.0
    n = int(max((r.arrival for r in results), default=0) // bucket) + 1
    counts = [0] * n
    for r in results:
        counts[int(r.arrival // bucket)] += 1
    axes[0].plot([i * bucket / 3600 for i in range(n)], [c / bucket for c in counts], "k-")
    axes[0].set_ylabel("requests/s")
    axes[0].set_title("distillery demo: ServeGen DeepSeek-R1 (compressed), 7B on H100")
    axes[1].step(
        [s[0] / 3600 for s in watcher.samples],
        [s[1] for s in watcher.samples],
        where="post",
        label="desired",
    )
    axes[1].step(
        [s[0] / 3600 for s in watcher.samples],
        [s[2] for s in watcher.samples],
        where="post",
        label="ready",
    )
    axes[1].set_ylabel("replicas")
    axes[1].legend()
    pts = [(r.arrival / 3600, r.ttft) for r in results if r.ttft is not None]
    axes[2].scatter([p[0] for p in pts], [p[1] for p in pts], s=2)
    axes[2].axhline(SLO_TTFT, color="r", linewidth=0.8)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("TTFT (s)")
    axes[2].set_xlabel("hours of trace")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> int:
    REPORTS.mkdir(exist_ok=True)
    work = ROOT / ".cache" / "demo"
    work.mkdir(parents=True, exist_ok=True)
    own = "KUBECONFIG" not in os.environ
    procs: list[subprocess.Popen[bytes]] = []
    prom: Prometheus | None = None
    watcher: Watcher | None = None
    cluster: Cluster | None = None
    try:
        if own:
            try:
                cluster = start(ROOT / ".cluster")
            except ClusterError as exc:
                print(f"[demo] cluster failed to start: {exc}", file=sys.stderr)
                return 1
            env, op_kubeconfig = cluster.env(), str(cluster.operator_kubeconfig)
        else:
            env = dict(os.environ)
            op_kubeconfig = env["KUBECONFIG"]
        kubectl = [str(BIN_DIR / "kubectl")]

        def k(*args: str, input: str | None = None) -> str:
            out = subprocess.run(
                kubectl + list(args), env=env, capture_output=True, text=True, input=input
            )
            if out.returncode != 0:
                raise SystemExit(f"kubectl {' '.join(args)}: {out.stderr}")
            return out.stdout

        k("apply", "--server-side", "-f", str(ROOT / "crds"))
        k(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/distilledmodeldeployments.distillery.dev",
        )
        subprocess.run([*kubectl, "create", "namespace", NAMESPACE], env=env, capture_output=True)
        sd = work / "targets.json"
        sd.write_text("[]")
        prom = Prometheus(workdir=work / "prometheus", file_sd=sd).start()
        print(f"[demo] Prometheus {prom.url}", flush=True)
        door = free_port()
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        netns = cluster.pod_netns if cluster is not None else None
        fleet = fleet_argv(env["KUBECONFIG"], NAMESPACE, sd, door, TIME_SCALE, netns)
        procs.append(background(fleet, logs / "fleet.log"))
        op = operator_argv(
            op_kubeconfig, NAMESPACE, "--prometheus-url", prom.url, "--autoscale-interval", "1"
        )
        procs.append(background(op, logs / "operator.log", env=operator_env(), cwd=ROOT))
        startup_wall = 151.0 / TIME_SCALE
        k("apply", "-f", "-", input=json.dumps(dmd_manifest(startup_wall)))
        print(f"[demo] applied dmd/{DMD}; waiting for Ready", flush=True)
        k("wait", "-n", NAMESPACE, "--for=condition=Ready", f"dmd/{DMD}", "--timeout=180s")
        print(k("get", "dmd", "-n", NAMESPACE), flush=True)
        requests = segment()
        print(
            f"[demo] replaying {len(requests)} requests "
            f"({(SEGMENT[1] - SEGMENT[0]) / 3600:.1f} h of trace in "
            f"{(SEGMENT[1] - SEGMENT[0]) / TIME_SCALE / 60:.1f} min)",
            flush=True,
        )
        watcher = Watcher(env)
        threading.Thread(target=watcher.run, daemon=True).start()
        t0 = time.monotonic()

        def progress(done: list[Result], sent: int) -> None:
            s = watcher.samples[-1] if watcher.samples else (0, 0, 0)
            ttfts = sorted(r.ttft for r in done[-500:] if r.ttft is not None)
            p95 = ttfts[int(0.95 * (len(ttfts) - 1))] if ttfts else math.nan
            sys.stdout.write(
                f"\r[demo] trace {((time.monotonic() - t0) * TIME_SCALE) / 3600:4.2f} h | "
                f"sent {sent:6d} done {len(done):6d} | replicas {s[1]:2d} ready {s[2]:2d} | "
                f"TTFT p95 (last 500) {p95:6.2f}s   "
            )
            sys.stdout.flush()

        results = asyncio.run(
            replay(requests, f"http://127.0.0.1:{door}", DMD, TIME_SCALE, progress)
        )
        print()
        watcher.stop.set()
        status = watcher.get().get("status") or {}
        price = float((status.get("cost") or {}).get("perReplicaHour") or 6.88)
        gpus = int((status.get("placement") or {}).get("gpuCount") or 1)
        summary = summarize(results, watcher, price, gpus)
        print(summary)
        out = REPORTS / "demo.png"
        plot(results, watcher, out)
        (REPORTS / "demo-summary.txt").write_text(summary + "\n")
        print(f"[demo] plot: {out}")
        return 0
    finally:
        if watcher is not None:
            watcher.stop.set()
        for p in procs:
            terminate(p)
        if prom is not None:
            prom.stop()
        if own:
            stop(ROOT / ".cluster")
            print("[demo] stopped the operator, fleet, Prometheus and the local cluster")


if __name__ == "__main__":
    raise SystemExit(main())
