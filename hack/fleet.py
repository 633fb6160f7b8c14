"""An emulated vLLM fleet for the local cluster, where pods never really run.

kwok marks pods Ready, but nothing serves. This process watches the Ready pods of every
DistilledModelDeployment and gives each a replica of the simulator's fleet model
(:mod:`distillery.simulate.fleet`), stepped in real time, with:

- a vLLM-named ``/metrics`` endpoint per pod, listed in a Prometheus file-SD file with
  the ``namespace`` and ``pod`` labels Kubernetes discovery would attach. With the
  cluster's pod network (``--netns``, see ``hack/podnet.py``) it listens on the pod's
  own address and port, where the endpoint picker and Prometheus reach it as in a
  cluster; without, on a 127.0.0.1 port of its own. Who scraped each pod (by user
  agent) is counted at ``/debug/scrapes`` on the front door;
- one OpenAI-compatible front door (``/v1/completions``, ``/v1/chat/completions``,
  streaming) that balances across the serving replicas of the DMD named by the request's
  ``model`` (a DMD name, or the served model name when it is unique);
- in front of that, the route semantics of a gateway with the Gateway API Inference
  Extension, read from the HTTPRoutes and InferencePools the operator wrote: the model
  copied into ``X-Gateway-Model-Name`` (body-based routing), the rules' header matches
  (most header matches first, then rule order), the backend's response headers (which
  tier answered), and the picker's flow control: a request for a pool with no serving
  pod is held until one serves, and the held count is exported per pool as
  ``inference_extension_flow_control_queue_size`` under the picker's pod name, as the
  extension's endpoint picker exports it.

A new pod serves only after its cold start (the DMD's ``scaling.startupSeconds``, else
the sizing estimate); a deleted pod drops what it held, as a killed engine would.

Time can be compressed by ``--time-scale C``: the fleet's physics run C times faster
than wall time. Counters and the TTFT histogram are exported in simulated units (token
counts divided by C, latencies multiplied by C) so rates and percentiles read as they
would at real speed; gauges need no scaling. Use DMDs whose time settings
(``startupSeconds``, stabilization windows) are divided by C as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

from kubernetes import client, config  # noqa: E402

from distillery.catalog import load_catalog  # noqa: E402
from distillery.engines.model import PORT  # noqa: E402
from distillery.reconcile import parse  # noqa: E402
from distillery.render import replica_startup_seconds  # noqa: E402
from distillery.simulate.engine import Scenario, replica_model  # noqa: E402
from distillery.simulate.exposition import VllmPod, exposition  # noqa: E402
from distillery.simulate.fleet import (  # noqa: E402
    Counters,
    Outcome,
    Replica,
    ReplicaModel,
    _Seq,
)
from distillery.simulate.workload import Request  # noqa: E402
from distillery.sizing import plan  # noqa: E402
from localcluster import free_port  # noqa: E402
from podnet import listen_in  # noqa: E402

log = logging.getLogger("fleet")
LABEL = "distillery.dev/deployment"
ROUTE_LABEL = "distillery.dev/route"
MODEL_HEADER = "x-gateway-model-name"
# How long a held request waits for a pool to serve (simulated seconds), as the
# extension's flow control bounds a request's time in its queue.
HOLD_SECONDS = 900.0


@dataclass(frozen=True)
class Backend:
    """Where a matched rule sends a request."""

    namespace: str
    kind: str  # InferencePool or Service
    name: str
    dmd: str  # the DMD whose pods serve it
    picker: str | None = None  # the pool's endpoint picker (its queue metric's pod)
    priority: int = 0
    response_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RouteRule:
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), all must match
    order: int
    backend: Backend


def route_table(
    http_routes: list[dict[str, Any]],
    pools: Mapping[str, Mapping[str, dict[str, Any]]],
    objectives: Mapping[str, Mapping[str, int]],
) -> list[RouteRule]:
    """Every match of every rule, most specific first (Gateway API precedence: more
    header matches first, then the order of routes and rules). ``pools`` and
    ``objectives`` are by namespace, then name."""
    rules: list[RouteRule] = []
    order = 0
    for route in http_routes:
        ns = str(route["metadata"].get("namespace", ""))
        for rule in (route.get("spec") or {}).get("rules") or []:
            refs = rule.get("backendRefs") or []
            if not refs:
                continue
            backend = _backend(ns, refs[0], pools.get(ns, {}), objectives.get(ns, {}))
            if backend is None:
                continue
            for match in rule.get("matches") or [{}]:
                headers = tuple(
                    (str(h["name"]).lower(), str(h["value"])) for h in match.get("headers") or []
                )
                rules.append(RouteRule(headers, order, backend))
                order += 1
    return sorted(rules, key=lambda r: (-len(r.headers), r.order))


def _backend(
    ns: str,
    ref: Mapping[str, Any],
    pools: Mapping[str, dict[str, Any]],
    objectives: Mapping[str, int],
) -> Backend | None:
    answer: tuple[tuple[str, str], ...] = ()
    objective = ""
    for f in ref.get("filters") or []:
        if f.get("type") == "ResponseHeaderModifier":
            answer += tuple(
                (str(h["name"]), str(h["value"]))
                for h in f["responseHeaderModifier"].get("set") or []
            )
        if f.get("type") == "RequestHeaderModifier":
            for h in f["requestHeaderModifier"].get("set") or []:
                if str(h["name"]).lower() == "x-gateway-inference-objective":
                    objective = str(h["value"])
    kind, name = str(ref.get("kind") or "Service"), str(ref["name"])
    if kind == "InferencePool":
        pool = pools.get(name)
        if pool is None:
            return None
        selector = ((pool.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        dmd = selector.get(LABEL)
        if not dmd:
            return None
        picker = ((pool.get("spec") or {}).get("endpointPickerRef") or {}).get("name")
        return Backend(
            namespace=ns,
            kind=kind,
            name=name,
            dmd=str(dmd),
            picker=str(picker) if picker else None,
            priority=objectives.get(objective, 0),
            response_headers=answer,
        )
    return Backend(namespace=ns, kind=kind, name=name, dmd=name, response_headers=answer)


def pick(table: list[RouteRule], headers: Mapping[str, str]) -> Backend | None:
    """The backend of the first rule whose header matches all hold (names lower-case)."""
    for rule in table:
        if all(headers.get(name) == value for name, value in rule.headers):
            return rule.backend
    return None


@dataclass
class PodReplica:
    namespace: str
    pod: str
    dmd: str
    served_name: str
    replica: Replica
    host: str  # where its /metrics listens: the pod's IP, or 127.0.0.1
    port: int
    runner: web.AppRunner | None = None
    ttfts: list[tuple[float, float]] = field(default_factory=list)
    # Scrapes of /metrics by user agent product ("Prometheus", "Go-http-client", ...).
    scrapes: Tally[str] = field(default_factory=Tally)


class Fleet:
    def __init__(
        self,
        api: client.ApiClient,
        namespaces: list[str],
        sd_file: Path,
        time_scale: float,
        netns: str | None = None,
    ):
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespaces = namespaces
        self.sd_file = sd_file
        self.c = time_scale
        self.netns = netns
        self.t0 = time.monotonic()
        self.catalog = load_catalog()
        self.pods: dict[tuple[str, str], PodReplica] = {}
        self.models: dict[tuple[str, str], tuple[ReplicaModel, str]] = {}
        self.pending: dict[int, tuple[Outcome, asyncio.Event, asyncio.Event]] = {}
        self.dropped = 0
        self.routes: list[RouteRule] = []
        # (namespace, picker) -> {priority: requests held}
        self.held: dict[tuple[str, str], dict[int, int]] = {}
        self.pickers: set[tuple[str, str]] = set()
        self.metrics_port = free_port()

    def now(self) -> float:
        """Simulated seconds since start."""
        return (time.monotonic() - self.t0) * self.c

    # ---- pods ---------------------------------------------------------------------------

    def _model_for(self, ns: str, dmd_name: str) -> tuple[ReplicaModel, str] | None:
        key = (ns, dmd_name)
        if key in self.models:
            return self.models[key]
        try:
            body = self.custom.get_namespaced_custom_object(
                "distillery.dev", "v1alpha1", ns, "distilledmodeldeployments", dmd_name
            )
            dmd = parse(cast(Mapping[str, Any], body))
            p = plan(dmd.spec, self.catalog)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot model %s/%s: %s", ns, dmd_name, exc)
            return None
        o, m = p.chosen, p.model
        # The operator's own estimate (its source, a weight cache), compressed in time.
        startup = float(
            dmd.spec.scaling.startup_seconds or replica_startup_seconds(dmd, p) / self.c
        )
        scenario = Scenario(
            model=m,
            option=o,
            max_concurrency=dmd.spec.serving.concurrency,
            typical_tokens=p.requirements.typical_tokens,
            slo_ttft=dmd.spec.scaling.slo.ttft_seconds,
            max_model_len=dmd.spec.serving.max_model_len,
        )
        # The simulator's replica for this DMD; startupSeconds is wall time in a
        # compressed DMD: in simulated seconds, x C.
        rm = replica_model(scenario, startup=startup * self.c)
        self.models[key] = (rm, dmd.spec.model.name)
        return self.models[key]

    async def sync_pods(self) -> None:
        ready_pods: dict[tuple[str, str], Any] = {}
        for ns in self.namespaces:
            pods = await asyncio.to_thread(self.core.list_namespaced_pod, ns, label_selector=LABEL)
            for pod in pods.items:
                ready = any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                )
                if ready and not pod.metadata.deletion_timestamp:
                    ready_pods[(ns, str(pod.metadata.name))] = pod
        # Gone pods first: kwok may give a new pod the address a deleted one had.
        for key in [k for k in self.pods if k not in ready_pods]:
            pr = self.pods.pop(key)
            self.dropped += len(pr.replica.drop_all())
            if pr.runner is not None:
                await pr.runner.cleanup()
            log.info("pod %s/%s gone", *key)
        for key, pod in ready_pods.items():
            if key in self.pods:
                continue
            found = self._model_for(key[0], pod.metadata.labels[LABEL])
            if found is None:
                continue
            rm, served = found
            host, port = "127.0.0.1", free_port()
            if self.netns is not None:
                if not pod.status.pod_ip:
                    continue  # no address yet: next sync
                host, port = str(pod.status.pod_ip), _container_port(pod)
            now = self.now()
            pr = PodReplica(
                key[0],
                key[1],
                pod.metadata.labels[LABEL],
                served,
                # Each pod has its own counters, as each vLLM process does.
                Replica(rm, now, now + rm.startup_seconds, Counters(), now=now),
                host,
                port,
            )
            try:
                await self._serve_metrics(pr)
            except OSError as exc:
                log.warning("pod %s/%s: cannot listen on %s:%d: %s", *key, host, port, exc)
                continue
            self.pods[key] = pr
            log.info(
                "pod %s/%s on %s:%d: serving in %.0f s",
                *key, host, port, rm.startup_seconds / self.c,
            )  # fmt: skip
        self._write_sd()

    async def sync_routes(self) -> None:
        """The operator's HTTPRoutes, InferencePools and InferenceObjectives."""
        http_routes: list[dict[str, Any]] = []
        pools: dict[str, dict[str, dict[str, Any]]] = {}
        objectives: dict[str, dict[str, int]] = {}
        pickers: set[tuple[str, str]] = set()
        for ns in self.namespaces:
            http_routes += await self._list(ns, "gateway.networking.k8s.io", "v1", "httproutes")
            for pool in await self._list(ns, "inference.networking.k8s.io", "v1", "inferencepools"):
                pools.setdefault(ns, {})[pool["metadata"]["name"]] = pool
                picker = ((pool.get("spec") or {}).get("endpointPickerRef") or {}).get("name")
                if picker:
                    pickers.add((ns, str(picker)))
            for o in await self._list(
                ns, "inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives"
            ):
                priority = int((o.get("spec") or {}).get("priority") or 0)
                objectives.setdefault(ns, {})[o["metadata"]["name"]] = priority
        self.routes = route_table(http_routes, pools, objectives)
        if pickers != self.pickers:
            self.pickers = pickers
            self._write_sd()

    async def _list(self, ns: str, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        try:
            found = await asyncio.to_thread(
                self.custom.list_namespaced_custom_object,
                group, version, ns, plural, label_selector=ROUTE_LABEL,
            )  # fmt: skip
        except client.ApiException as exc:
            if exc.status == 404:  # the API is not installed
                return []
            raise
        return list(cast(dict[str, Any], found).get("items") or [])

    def _write_sd(self) -> None:
        targets = [
            {"targets": [f"{p.host}:{p.port}"], "labels": {"namespace": p.namespace, "pod": p.pod}}
            for p in self.pods.values()
        ]
        # Each pool's picker, under its pod name, as Kubernetes discovery would label it.
        targets += [
            {
                "targets": [f"127.0.0.1:{self.metrics_port}"],
                "labels": {
                    "namespace": ns,
                    "pod": f"{picker}-fleet",
                    "__metrics_path__": f"/pickers/{ns}/{picker}/metrics",
                },
            }
            for ns, picker in sorted(self.pickers)
        ]
        tmp = self.sd_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(self.sd_file)

    async def _serve_metrics(self, pr: PodReplica) -> None:
        async def metrics(request: web.Request) -> web.Response:
            pr.scrapes[request.headers.get("User-Agent", "-").split("/")[0]] += 1
            return web.Response(
                text=self.exposition(pr), content_type="text/plain", charset="utf-8"
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        pr.runner = web.AppRunner(app, access_log=None)
        await pr.runner.setup()
        if self.netns is None:
            await web.TCPSite(pr.runner, pr.host, pr.port).start()
            return
        try:
            sock = await asyncio.to_thread(listen_in, self.netns, pr.host, pr.port)
        except OSError:
            await pr.runner.cleanup()
            raise
        await web.SockSite(pr.runner, sock).start()

    def exposition(self, pr: PodReplica) -> str:
        r, c = pr.replica, self.c
        k = r.counters
        serving = r.ready(self.now())
        values = VllmPod(
            running=r.running if serving else 0,
            waiting=r.queued if serving else 0,
            kv_usage=r.kv_usage,
            prompt_tokens=k.prompt_tokens / c,
            computed_prompt_tokens=k.computed_prompt_tokens / c,
            generation_tokens=k.generation_tokens / c,
            finished={"stop": k.finished / c},
            ttft_counts=[n / c for n in k.ttft_buckets],
            ttft_sum=k.ttft_sum / c,
            responses={"2xx": k.finished / c},
        )
        return exposition([({}, values)], pr.served_name)

    # ---- time ---------------------------------------------------------------------------

    async def run(self, tick_wall: float = 0.02) -> None:
        while True:
            await asyncio.sleep(tick_wall)
            now = self.now()
            for pr in list(self.pods.values()):
                if now >= pr.replica.ready_at:
                    pr.replica.advance(now, pr.ttfts)
                pr.ttfts.clear()
            for rid, (outcome, first, done) in list(self.pending.items()):
                if outcome.first_token is not None and outcome.first_token <= now:
                    first.set()
                if outcome.dropped or (outcome.finish is not None and outcome.finish <= now):
                    first.set()
                    done.set()
                    del self.pending[rid]

    async def sync_forever(self, every: float = 1.0) -> None:
        while True:
            try:
                await self.sync_pods()
                await self.sync_routes()
            except Exception as exc:  # noqa: BLE001 - keep emulating through API hiccups
                log.warning("pod sync failed: %s", exc)
            await asyncio.sleep(every)

    # ---- the front door -----------------------------------------------------------------

    def route(self, model: str, prompt: int, output: int) -> tuple[Outcome, Any] | None:
        now = self.now()
        serving = [
            p
            for p in self.pods.values()
            if p.replica.ready(now) and model in (p.dmd, p.served_name)
        ]
        return self._enqueue(serving, prompt, output)

    def _enqueue(
        self, serving: list[PodReplica], prompt: int, output: int
    ) -> tuple[Outcome, Any] | None:
        now = self.now()
        if not serving:
            return None
        target = min(serving, key=lambda p: (p.replica.outstanding, p.replica.id))
        outcome = Outcome(Request(now, prompt, output))
        target.replica.enqueue(_Seq(outcome, prompt, prompt, float(max(0, output - 1))))
        return outcome, target

    async def _through(
        self,
        backend: Backend,
        prompt: int,
        output: int,
        extra: dict[str, str],
    ) -> tuple[Outcome, Any] | None:
        """Route to the backend's DMD; a pool with no serving pod holds the request (flow
        control) until one serves, counted in its picker's queue."""

        def serving() -> list[PodReplica]:
            now = self.now()
            return [
                p
                for p in self.pods.values()
                if (p.namespace, p.dmd) == (backend.namespace, backend.dmd) and p.replica.ready(now)
            ]

        routed = self._enqueue(serving(), prompt, output)
        if routed is not None or backend.kind != "InferencePool" or backend.picker is None:
            return routed
        key = (backend.namespace, backend.picker)
        counts = self.held.setdefault(key, {})
        counts[backend.priority] = counts.get(backend.priority, 0) + 1
        started = self.now()
        try:
            while self.now() - started < HOLD_SECONDS:
                await asyncio.sleep(0.05)
                routed = self._enqueue(serving(), prompt, output)
                if routed is not None:
                    extra["x-distillery-held-seconds"] = f"{self.now() - started:.1f}"
                    return routed
            return None
        finally:
            counts[backend.priority] -= 1

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        model = str(body.get("model", ""))
        if "messages" in body:
            text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        else:
            text = str(body.get("prompt", ""))
        prompt = int(body.get("prompt_tokens") or max(1, len(text.split())))
        output = int(body.get("max_tokens") or 16)
        headers_in = {k.lower(): v for k, v in request.headers.items()}
        headers_in[MODEL_HEADER] = model
        backend = pick(self.routes, headers_in) if self.routes else None
        extra: dict[str, str] = {}
        if backend is not None:
            extra = dict(backend.response_headers)
            routed = await self._through(backend, prompt, output, extra)
        else:
            routed = self.route(model, prompt, output)
        if routed is None:
            return web.json_response(
                {"error": f"no serving replica for model {model!r}"}, status=503, headers=extra
            )
        outcome, pod = routed
        first, done = asyncio.Event(), asyncio.Event()
        self.pending[id(outcome)] = (outcome, first, done)
        stream = bool(body.get("stream"))
        kind = "chat.completion" if "messages" in body else "text_completion"
        headers = {"x-distillery-pod": pod.pod, **extra}
        if not stream:
            await done.wait()
            if outcome.dropped:
                return web.json_response({"error": "replica went away"}, status=502)
            return web.json_response(
                {
                    "id": f"cmpl-{id(outcome)}",
                    "object": kind,
                    "model": model,
                    "choices": [{"index": 0, "text": "x " * output, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": output},
                    "ttft": outcome.ttft,
                    "latency": (outcome.finish or self.now()) - outcome.request.arrival,
                },
                headers=headers,
            )
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await first.wait()
        if not outcome.dropped:
            # The engine's own measurement, in trace seconds: at a compressed time scale the
            # wall-clock HTTP overhead would otherwise be magnified by the scale.
            chunk: dict[str, Any] = {"choices": [{"index": 0, "text": "x"}], "ttft": outcome.ttft}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await done.wait()
        if not outcome.dropped:
            latency = (outcome.finish or self.now()) - outcome.request.arrival
            chunk = {
                "choices": [{"index": 0, "text": " ...", "finish_reason": "length"}],
                "latency": latency,
            }
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _container_port(pod: Any) -> int:
    """The port the pod's engine serves on (its first declared container port)."""
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            return int(port.container_port)
    return PORT  # the port every rendered engine serves on


def picker_exposition(held: Mapping[int, int]) -> str:
    """The flow-control queue as the extension's endpoint picker exports it."""
    lines = [
        "# HELP inference_extension_flow_control_queue_size Current number of requests "
        "being actively managed by the EPP flow control layer.",
        "# TYPE inference_extension_flow_control_queue_size gauge",
    ]
    for priority, n in sorted((held or {0: 0}).items()):
        lines.append(
            f'inference_extension_flow_control_queue_size{{fairness_id="default",'
            f'priority="{priority}"}} {n}'
        )
    return "\n".join(lines) + "\n"


async def serve(fleet: Fleet, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/v1/completions", fleet.handle)
    app.router.add_post("/v1/chat/completions", fleet.handle)

    async def health(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "pods": len(fleet.pods),
                "pending": len(fleet.pending),
                "simSeconds": round(fleet.now(), 1),
            }
        )

    app.router.add_get("/health", health)

    async def scrapes(_: web.Request) -> web.Response:
        return web.json_response(
            {
                f"{p.namespace}/{p.pod}": {"address": f"{p.host}:{p.port}", "by": dict(p.scrapes)}
                for p in fleet.pods.values()
            }
        )

    app.router.add_get("/debug/scrapes", scrapes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    async def picker_metrics(request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["picker"])
        return web.Response(
            text=picker_exposition(fleet.held.get(key, {})),
            content_type="text/plain",
            charset="utf-8",
        )

    pickers = web.Application()
    pickers.router.add_get("/pickers/{ns}/{picker}/metrics", picker_metrics)
    picker_runner = web.AppRunner(pickers, access_log=None)
    await picker_runner.setup()
    await web.TCPSite(picker_runner, "127.0.0.1", fleet.metrics_port).start()
    return runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", action="append", required=True)
    parser.add_argument("--sd-file", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True, help="front door port")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument(
        "--netns", help="the cluster's pod network namespace: listen on pods' own addresses"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fleet: %(message)s")
    api = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    fleet = Fleet(api, args.namespace, args.sd_file, args.time_scale, args.netns)
    args.sd_file.write_text("[]")

    async def go() -> None:
        await serve(fleet, args.port)
        log.info(
            "front door on 127.0.0.1:%d, time x%g, pods %s",
            args.port, args.time_scale,
            f"on their addresses in netns {args.netns}" if args.netns else "on loopback ports",
        )  # fmt: skip
        await asyncio.gather(fleet.run(), fleet.sync_forever())

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Fleet", "serve"]
