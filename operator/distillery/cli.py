"""The ``distillery`` command: plan, render, run, simulate, recommend, crd.

Sub-commands read manifests from files or standard input and print to standard output;
errors go to standard error with exit code 1 (bad input) or 2 (usage), so they compose
in GitOps pipelines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from distillery.api.crd import (
    CHART_CRD_FILE,
    CRD_FILE,
    ROUTE_CRD_FILE,
    crd_chart_template,
    crd_yaml,
    reference_markdown,
    route_crd_yaml,
)
from distillery.api.errors import validation_problems
from distillery.api.routing import ROUTE_KIND, ReasoningRoute
from distillery.api.types import KIND, DistilledModelDeployment, DistilledModelDeploymentSpec
from distillery.catalog import Catalog, CatalogError, load_catalog
from distillery.reconcile.slo import spec_slo_measurement
from distillery.render import DEFAULT_IMAGES, RenderError, RenderOptions, objects_text, render
from distillery.render.routing import (
    RouteRenderError,
    RouteRenderOptions,
    TierBackend,
    render_route,
)
from distillery.sizing import Option, Plan, PlanError, UnknownModelError, plan

if TYPE_CHECKING:  # recommend pulls in the simulator: imported when the command runs
    from distillery.recommend import Candidate, QualityTable
    from distillery.recommend import Requirements as RecommendRequirements
    from distillery.settings import Settings


class InputError(ValueError):
    """A manifest could not be read or is not a valid DistilledModelDeployment."""


class UsageError(InputError):
    """A flag's value can never work (exit 2, as argparse exits for a bad flag)."""


# -o means an output format, as in kubectl; files are written with named flags.
OUTPUT_FORMATS = ("table", "wide", "json", "yaml", "name")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
RESOURCE_NAME = "distilledmodeldeployment.distillery.dev"


ObjectT = TypeVar("ObjectT", bound=BaseModel)


def number(
    kind: type[int] | type[float] = float,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """An argparse ``type`` that parses a finite number and checks its range, so a bad
    value exits 2 with "argument --flag: must be ... (got ...)"."""
    bounds = [
        f"{op} {limit:g}"
        for op, limit in ((">", gt), (">=", ge), ("<", lt), ("<=", le))
        if limit is not None
    ]
    what = "an integer" if kind is int else "a number"
    wanted = what + (" " + " and ".join(bounds) if bounds else "")

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted} (got {text!r})") from None
        ok = math.isfinite(value)
        ok = ok and (gt is None or value > gt) and (ge is None or value >= ge)
        ok = ok and (lt is None or value < lt) and (le is None or value <= le)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {wanted} (got {text})")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, naming the field path the way a manifest spells it."""
    lines = [f"{source}: invalid DistilledModelDeployment:"]
    lines += [f"  {problem}" for problem in validation_problems(exc)]
    return "\n".join(lines)


def manifest_paths(args: argparse.Namespace) -> list[str]:
    """Positional files and ``-f`` values; a directory stands for its manifest files
    (``*.yaml``, ``*.yml``, ``*.json``, sorted), as ``kubectl apply -f DIR`` reads it."""
    given = [*getattr(args, "files", []), *getattr(args, "filename", [])]
    if not given:
        raise UsageError("name at least one manifest: FILE, DIRECTORY, or '-' for standard input")
    out: list[str] = []
    for path in given:
        folder = Path(path)
        if path != "-" and folder.is_dir():
            found = sorted(str(f) for f in folder.iterdir() if f.suffix in MANIFEST_SUFFIXES)
            if not found:
                raise InputError(f"{path}: no manifest files (*.yaml, *.yml, *.json) in it")
            out += found
        else:
            out.append(path)
    return out


def read_documents(path: str) -> list[Any]:
    """The documents of a YAML (or JSON) stream; ``-`` is standard input."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from exc


def _objects_of_kind(
    path: str, docs: Sequence[Any], model: type[ObjectT], kind: str
) -> list[tuple[str, ObjectT]]:
    """The documents of ``kind`` in ``docs``, validated (status ignored), each with where
    it came from: ``path (name)``."""
    out: list[tuple[str, ObjectT]] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") != kind:
            continue
        name = (doc.get("metadata") or {}).get("name", f"document {i}")
        source = f"{path} ({name})"
        try:
            out.append(
                (source, model.model_validate({k: v for k, v in doc.items() if k != "status"}))
            )
        except ValidationError as exc:
            raise InputError(format_validation_error(exc, source)) from exc
    return out


def load_manifests(
    path: str, *, allow_empty: bool = False, documents: Sequence[Any] | None = None
) -> list[tuple[str, DistilledModelDeployment]]:
    """Every DistilledModelDeployment in a YAML stream; other kinds are skipped."""
    docs = read_documents(path) if documents is None else documents
    out = _objects_of_kind(path, docs, DistilledModelDeployment, KIND)
    if not out and not allow_empty:
        raise InputError(f"{path}: no {KIND} found")
    return out


def load_routes(documents: Mapping[str, Sequence[Any]]) -> list[tuple[str, ReasoningRoute]]:
    """Every ReasoningRoute in the documents read, validated."""
    return [
        found
        for path, docs in documents.items()
        for found in _objects_of_kind(path, docs, ReasoningRoute, ROUTE_KIND)
    ]


def _render_route(
    args: argparse.Namespace,
    route: ReasoningRoute,
    dmds: Mapping[str, tuple[DistilledModelDeployment, bool]],
    options: RouteRenderOptions,
) -> list[dict[str, Any]]:
    """What the operator applies for ``route``, its tiers' DMDs read from the manifests
    given (the operator reads them from the route's namespace)."""
    if args.namespace:
        route = route.model_copy(
            update={"metadata": {**route.metadata, "namespace": args.namespace}}
        )
    backends: dict[str, TierBackend] = {}
    for tier in route.spec.tiers:
        if tier.deployment not in dmds:
            raise RouteRenderError(
                f"tier {tier.name}: DMD {tier.deployment} is not in the manifests given: add "
                "its manifest to the command line"
            )
        dmd, multi_node = dmds[tier.deployment]
        backends[tier.name] = TierBackend(engine=dmd.spec.serving.engine, multi_node=multi_node)
    return render_route(route, backends, options=options).objects


def read_all_manifests(
    args: argparse.Namespace, documents: Mapping[str, Sequence[Any]] | None = None
) -> list[tuple[str, DistilledModelDeployment]]:
    """The DMDs of every path; a directory may hold other kinds, but not only them.

    ``documents`` holds paths already read (standard input can be read only once)."""
    paths = manifest_paths(args)
    out: list[tuple[str, DistilledModelDeployment]] = []
    for path in paths:
        docs = None if documents is None else documents.get(path)
        out += load_manifests(path, allow_empty=len(paths) > 1, documents=docs)
    if not out:
        raise InputError(f"{', '.join(paths)}: no {KIND} found")
    return out


def write_structured(doc: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(yaml.safe_dump(doc, sort_keys=False))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def grouped_alternatives(alternatives: Sequence[Option]) -> list[Option]:
    """One row per GPU type and quantization: the option that came closest.

    ``auto`` tries every catalog GPU at every tensor-parallel size and quantization,
    about fifty rows; most say the same thing as their neighbour. The row kept is the
    first feasible one (the planner's order), else the one that missed by least.
    """
    best: dict[tuple[str, str], Option] = {}
    for alt in alternatives:
        key = (alt.gpu.name, alt.quantization)
        held = best.get(key)
        # Feasible options come first in the planner's order, so a held infeasible row
        # only ever competes with infeasible ones.
        if held is None or (not held.feasible and _shortfall(alt) < _shortfall(held)):
            best[key] = alt
    kept = {id(o) for o in best.values()}
    return [o for o in alternatives if id(o) in kept]


def _shortfall(opt: Option) -> float:
    """GiB an infeasible option lacks; structural misses (heads, node size) rank last."""
    if opt.reason.startswith("does not fit"):
        return -opt.free_gib
    return math.inf


def render_plan_table(name: str, p: Plan, *, wide: bool = False, every: bool = False) -> str:
    c = p.chosen
    cur = p.currency
    per_tok = (
        f"{c.cost_per_million_tokens:.3f} {cur}/Mtok"
        if c.cost_per_million_tokens is not None
        else "n/a"
    )
    asked = (
        f"asked {p.requirements.max_concurrency}"
        if p.requirements.concurrency_explicit
        else "maxConcurrency not set"
    )
    lines = [
        f"{name}: {p.model.name}",
        f"  placement   {c.gpu_count}x {c.gpu.name} ({c.gpu.product}), tensor parallel "
        f"{c.tensor_parallel}, quantization {c.quantization}"
        + (
            f"; {c.nodes} nodes x {c.gpus_per_node} GPUs as one LeaderWorkerSet group"
            + (f", pipeline parallel {c.pipeline_parallel}" if c.pipeline_parallel > 1 else "")
            if c.nodes > 1
            else ""
        )
        + ("; expert parallel" if c.expert_parallel else ""),
        f"  memory      weights {c.weights_gib:.1f} GiB + KV {c.kv_needed_gib:.1f} GiB + "
        f"overhead {c.overhead_gib:.1f} GiB of {c.budget_gib:.1f} GiB (free "
        f"{c.free_gib:.1f} GiB)",
        f"  capacity    {c.kv_cache_tokens} KV tokens, {c.max_concurrency} sequences of "
        f"{p.requirements.typical_tokens} tokens ({asked}), "
        f"~{c.decode_tokens_per_second:.0f} output tok/s",
        f"  cost        {c.cost_per_replica_hour:.2f} {cur}/replica-hour, ~{per_tok}",
    ]
    if p.rule:
        lines.append(f"  rule        {p.rule}")
    shown = list(p.alternatives) if every else grouped_alternatives(p.alternatives)
    if not shown:
        return "\n".join(lines)
    lines.append("  alternatives:")
    head = ["GPU", "QUANT", "FITS", "COST/H"]
    if wide:
        head += ["TP", "KV TOKENS", "SEQS", f"{cur}/MTOK"]
    rows = [[*head, "WHY NOT"]]
    for alt in shown:
        row = [
            alt.summary,
            alt.quantization,
            "yes" if alt.feasible else "no",
            f"{alt.cost_per_replica_hour:.2f}",
        ]
        if wide:
            per = alt.cost_per_million_tokens
            row += [
                str(alt.tensor_parallel),
                str(alt.kv_cache_tokens),
                str(alt.max_concurrency),
                f"{per:.3f}" if per is not None else "-",
            ]
        rows.append([*row, alt.reason])
    lines += ["    " + line for line in _table(rows).splitlines()]
    hidden = len(p.alternatives) - len(shown)
    if hidden:
        lines.append(f"    ({hidden} more rows like these: --all lists every option)")
    return "\n".join(lines)


def _with_slo_line(table: str, message: str) -> str:
    """The SLO line goes after the cost, before the alternatives."""
    lines = table.splitlines()
    at = next((i for i, line in enumerate(lines) if line == "  alternatives:"), len(lines))
    return "\n".join([*lines[:at], f"  slo         {message}", *lines[at:]])


def _catalog(paths: Sequence[str]) -> Catalog:
    extra = []
    for p in paths:
        try:
            extra.append((p, Path(p).read_text(encoding="utf-8")))
        except OSError as exc:
            raise InputError(f"{p}: cannot read catalog file: {exc.strerror}") from exc
    return load_catalog(extra)


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    catalog = _catalog(args.catalog)
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    names: list[str] = []
    failed = False
    for source, dmd in read_all_manifests(args):
        try:
            p = plan(dmd.spec, catalog)
        except (PlanError, UnknownModelError) as exc:
            failed = True
            print(f"{source}: {exc}", file=sys.stderr)
            results.append({"name": dmd.name, "error": str(exc)})
            continue
        slo = spec_slo_measurement(dmd.spec)
        results.append(
            {
                "name": dmd.name,
                **p.to_json(),
                "slo": {"measurable": slo.exact, "reason": slo.reason, "message": slo.message},
            }
        )
        names.append(f"{RESOURCE_NAME}/{dmd.name}")
        table = render_plan_table(dmd.name, p, wide=args.output == "wide", every=args.all)
        texts.append(_with_slo_line(table, slo.message))
    if args.output in ("json", "yaml"):
        # Always a list, however many manifests: a script's jq path never changes shape.
        write_structured(results, args.output, out)
    elif args.output == "name":
        out.write("".join(n + "\n" for n in names))
    else:
        out.write("\n\n".join(texts) + ("\n" if texts else ""))
    return 1 if failed else 0


def render_options(args: argparse.Namespace) -> RenderOptions:
    """What the operator would render with: its DISTILLERY_* environment, then flags."""
    from distillery.settings import Settings

    images: dict[str, str] = {}
    for item in args.image:
        engine, sep, image = item.partition("=")
        if not sep or not image or engine not in DEFAULT_IMAGES:
            raise UsageError(
                f"--image {item!r}: expected ENGINE=IMAGE with ENGINE one of "
                f"{', '.join(DEFAULT_IMAGES)}"
            )
        images[engine] = image
    try:
        settings = Settings.from_env(cache_storage_class=args.cache_storage_class)
    except ValidationError as exc:
        raise InputError(f"DISTILLERY_* environment: {exc}") from exc
    return settings.render_options(
        pod_monitor=args.pod_monitor or settings.pod_monitor == "true",
        http_route=args.http_route,
        images=images,
    )


def route_render_options(args: argparse.Namespace) -> RouteRenderOptions:
    """What the operator would render routes with: its DISTILLERY_* environment, then
    flags."""
    from distillery.settings import Settings

    try:
        settings = Settings.from_env()
    except ValidationError as exc:
        raise InputError(f"DISTILLERY_* environment: {exc}") from exc
    return settings.route_render_options(
        inference_extension=args.inference_extension, gateway_api=args.http_route
    )


def _strip_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "namespace"}
    return {**obj, "metadata": meta}


def cmd_render(args: argparse.Namespace, out: TextIO) -> int:
    catalog = _catalog(args.catalog)
    options = render_options(args)
    documents = {path: read_documents(path) for path in manifest_paths(args)}
    # A templateRef's ConfigMap, from the manifests given (as the operator reads it from
    # the namespace) or from --user-template NAME=FILE, which wins.
    config_maps: dict[str, dict[str, str]] = {
        (doc.get("metadata") or {}).get("name", ""): dict(doc.get("data") or {})
        for docs in documents.values()
        for doc in docs
        if isinstance(doc, dict)
        and doc.get("kind") == "ConfigMap"
        and doc.get("apiVersion") == "v1"
    }
    templates: dict[str, str] = {}
    for item in args.user_template:
        name, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--user-template {item!r}: expected CONFIGMAP=FILE")
        try:
            templates[name] = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    collected: list[dict[str, Any]] = []
    failed = False
    # Each DMD by name, and whether a replica spans nodes: what a route's tiers need.
    dmds: dict[str, tuple[DistilledModelDeployment, bool]] = {}
    for source, dmd in read_all_manifests(args, documents):
        # Like `helm template`: a manifest without a namespace renders without one, so
        # `distillery render f.yaml | kubectl -n team apply -f -` works; -n sets it.
        namespaced = bool(args.namespace or dmd.metadata.get("namespace"))
        if args.namespace:
            dmd = dmd.model_copy(update={"metadata": {**dmd.metadata, "namespace": args.namespace}})
        ref = dmd.spec.serving.template_ref
        user_template = None
        if ref is not None:
            if ref.name in templates:
                user_template = templates[ref.name]
            elif ref.key in config_maps.get(ref.name, {}):
                user_template = config_maps[ref.name][ref.key]
            else:
                where = (
                    f"ConfigMap {ref.name} in the manifests has no key {ref.key}"
                    if ref.name in config_maps
                    else f"ConfigMap {ref.name} is not in the manifests given"
                )
                print(
                    f"{source}: templateRef: {where}: add it, or pass "
                    f"--user-template {ref.name}=FILE",
                    file=sys.stderr,
                )
                failed = True
                continue
        try:
            chosen = plan(dmd.spec, catalog)
            rendered = render(dmd, chosen, options=options, user_template=user_template)
        except (PlanError, UnknownModelError, RenderError) as exc:
            print(f"{source}: {exc}", file=sys.stderr)
            failed = True
            continue
        slo = spec_slo_measurement(dmd.spec)
        if not slo.exact:  # on stderr: stdout stays exactly what the operator applies
            print(f"{source}: note: {slo.message}", file=sys.stderr)
        objects = rendered.objects()
        collected += objects if namespaced else [_strip_namespace(o) for o in objects]
        dmds[dmd.name] = (dmd, chosen.chosen.nodes > 1)
    routes = load_routes(documents)
    route_options = route_render_options(args) if routes else None
    for source, route in routes:
        assert route_options is not None
        try:
            objects = _render_route(args, route, dmds, route_options)
        except RouteRenderError as exc:
            print(f"{source}: {exc}", file=sys.stderr)
            failed = True
            continue
        namespaced = bool(args.namespace or route.metadata.get("namespace"))
        collected += objects if namespaced else [_strip_namespace(o) for o in objects]
    if args.output == "name":
        out.write("".join(f"{o['kind'].lower()}/{o['metadata']['name']}\n" for o in collected))
    elif collected:
        out.write(objects_text(collected, "json" if args.output == "json" else "yaml"))
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    """Start the operator (kopf) with settings from DISTILLERY_* and the flags."""
    import logging

    from distillery.settings import Settings

    overrides = {name: getattr(args, name) for name in Settings.model_fields}
    try:
        settings = Settings.from_env(**overrides)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc))
        raise InputError(
            f"distillery run: invalid settings (flags and DISTILLERY_* variables): {problems}"
        ) from None
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from distillery.kube import unreachable_reason

    problem = unreachable_reason(settings.kubeconfig or None)
    if problem:
        raise InputError(f"distillery run: {problem}")
    # The operator talks to the API server through distillery.kube.rest. kopf imports
    # the official client's models whenever that package is installed (34 MiB resident,
    # a fifth of the budget at 2,000 DMDs); the image does not install it, a development
    # environment does (its tests use it): keep it out of this process either way.
    for unused in ("kubernetes", "kubernetes_asyncio", "pykube"):
        sys.modules.setdefault(unused, None)  # type: ignore[arg-type]
    import kopf

    import distillery.handlers  # noqa: F401 - registers the handlers

    _log_memory_on_sigusr2()
    liveness = (
        f"http://{settings.metrics_bind}:{settings.health_port}/healthz"
        if settings.health_port
        else None
    )

    def run_kopf() -> None:
        kopf.run(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=not settings.peering,
            peering_name=settings.peering or None,
            priority=settings.priority,
            liveness_endpoint=liveness,
            memo=kopf.Memo(settings=settings),
        )

    if not settings.leader_election:
        run_kopf()
        return 0
    return _run_elected(settings, run_kopf)


def _run_elected(settings: Settings, run_kopf: Callable[[], None]) -> int:
    """Stand by until this instance holds the Lease, then run kopf until it is stopped
    or loses the Lease (exit 1: its pod restarts as a standby)."""
    import logging
    import os
    import signal

    from distillery import metrics
    from distillery.kube import connect
    from distillery.kube.leader import LeaderElector, StandbyHealth, Timings

    log = logging.getLogger("distillery")
    identity = settings.instance_identity()
    elector = LeaderElector(
        connect(settings.kubeconfig or None, identity),
        settings.leader_election_namespace or _own_namespace(),
        settings.leader_election_id,
        identity,
        Timings(
            settings.leader_election_lease_seconds,
            settings.leader_election_renew_deadline_seconds,
            settings.leader_election_retry_period_seconds,
        ),
    )
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_bind)
    health = (
        StandbyHealth(settings.metrics_bind, settings.health_port) if settings.health_port else None
    )
    elector.acquire()
    if health is not None:
        health.close()  # kopf serves /healthz from here on, on the same port
    stop = threading.Event()
    # What a leader still has in flight when it loses the Lease must end before a standby
    # may take over: that margin is the lease less the renew deadline.
    grace = max(
        0.5,
        (settings.leader_election_lease_seconds - settings.leader_election_renew_deadline_seconds)
        / 2,
    )

    def lost(why: str) -> None:
        # kopf stops as on a pod's termination; whatever has not stopped by the grace is
        # cut short, so nothing of this instance acts once a standby may.
        os.kill(os.getpid(), signal.SIGTERM)
        timer = threading.Timer(grace, os._exit, args=(1,))
        timer.daemon = True
        timer.start()

    renewing = elector.hold(stop, lost)
    try:
        run_kopf()
    finally:
        stop.set()
        # A renewal under way would change the Lease under the release (a conflict, and
        # the standby waits a whole lease): let it finish first.
        renewing.join(timeout=grace)
        elector.release()
    if elector.lost_reason is not None:
        log.error("exiting: leadership lost (%s)", elector.lost_reason)
        return 1
    return 0


def _own_namespace() -> str:
    """The namespace of the pod this runs in (its service account's), else default."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    try:
        return path.read_text().strip() or "default"
    except OSError:
        return "default"


# The last line of what ``kill -USR2`` logs: a reader waits for it.
MEMORY_REPORT_END = "end of the memory report"


def c_heap_figures() -> dict[str, float]:
    """The C heap in MiB (glibc's ``mallinfo2``; empty without glibc): what is in use,
    what is free inside it, and what large blocks hold in their own mappings. Python's
    allocator serves objects up to 512 bytes from its own arenas; larger ones (big
    dicts' tables, long strings, I/O buffers) and C libraries' memory are here."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return {}
    mallinfo2.restype = Mallinfo2
    info = mallinfo2()
    return {
        "inUseMiB": round(info.uordblks / 2**20, 1),
        "freeMiB": round(info.fordblks / 2**20, 1),
        "mappedMiB": round(info.hblkhd / 2**20, 1),
    }


def _log_memory_on_sigusr2() -> None:
    """``kill -USR2`` writes the Python allocator's arena statistics to stderr (how much
    of the heap is live blocks, and how much is free space in arenas that cannot go back
    to the system) and the C heap's figures (what large objects and C libraries hold);
    with tracemalloc on (``PYTHONTRACEMALLOC=12``) it also logs where
    the operator's memory is held, by allocating call stack, and saves the snapshot to
    compare two offline. How to find what grows with the fleet in a running operator,
    without a debugger or a restart."""
    import logging
    import os
    import signal
    import tempfile
    import tracemalloc

    taken = 0

    def report(signum: int, frame: object) -> None:
        nonlocal taken
        lines = []
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            # On disk too, to compare two (idle, then with the fleet) offline:
            # Snapshot.load(later).compare_to(Snapshot.load(earlier), "traceback").
            taken += 1
            path = Path(tempfile.gettempdir()) / f"distillery-memory-{os.getpid()}-{taken}.snapshot"
            snapshot.dump(str(path))
            stats = snapshot.statistics("traceback")
            total = sum(s.size for s in stats)
            lines.append(
                f"traced memory: {total / 2**20:.1f} MiB in {len(stats)} call stacks "
                f"(snapshot: {path})"
            )
            for stat in stats[:25]:
                lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d} blocks")
                lines.extend(f"    {line}" for line in stat.traceback.format(limit=12))
        sys._debugmallocstats()
        lines += [f"C heap: {c_heap_figures()}", MEMORY_REPORT_END]
        logging.getLogger("distillery").warning("%s", "\n".join(lines))

    signal.signal(signal.SIGUSR2, report)


def cmd_simulate(args: argparse.Namespace, out: TextIO) -> int:
    """Replay a trace against a fleet under each policy; report and plot."""
    import time

    from distillery.simulate.engine import POLICY_NAMES, Scenario, simulate
    from distillery.simulate.report import plot, table
    from distillery.simulate.workload import WorkloadError, load

    policies = POLICY_NAMES if args.policy == "all" else tuple(args.policy.split(","))
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        valid = ", ".join(POLICY_NAMES)
        raise UsageError(f"--policy: unknown {', '.join(map(repr, unknown))}; valid: all, {valid}")
    catalog = _catalog(args.catalog)
    spec = simulation_spec(args, catalog)
    try:
        chosen = plan(spec, catalog)
    except (PlanError, UnknownModelError) as exc:
        raise InputError(str(exc)) from exc
    model = chosen.model
    try:
        requests = load(Path(args.trace), args.format, args.rate_scale, args.time_scale, args.seed)
    except OSError as exc:
        raise InputError(f"{args.trace}: cannot read: {exc.strerror or exc}") from exc
    except WorkloadError as exc:  # names the file and line itself
        raise InputError(str(exc)) from exc
    if not requests:
        raise InputError(f"{args.trace}: no requests")
    slo = spec.scaling.slo
    scenario = Scenario(
        model=model,
        option=chosen.chosen,
        max_concurrency=spec.serving.concurrency,
        typical_tokens=chosen.requirements.typical_tokens,
        slo_ttft=slo.ttft_seconds,
        slo_percentile=slo.percentile,
        objective=spec.scaling.objective,
        # Flags alone: room to show what each policy would buy; a DMD: its own bound.
        max_replicas=args.max_replicas or (spec.scaling.max_replicas if args.filename else 200),
        dt=args.dt,
        max_model_len=spec.serving.max_model_len,
    )
    started = time.perf_counter()
    horizon = requests[-1].arrival

    show = args.progress and sys.stderr.isatty()

    def progress(name: str, t: float) -> None:
        if show:
            done = min(1.0, t / horizon) if horizon else 1.0
            bar = "#" * int(done * 30)
            print(f"\r{name:16} [{bar:30}] {100 * done:5.1f}%", end="", file=sys.stderr, flush=True)

    results = simulate(requests, scenario, policies, progress=progress, scenario=args.scenario)
    if show:
        print(file=sys.stderr)
    report = {
        "trace": {
            "path": str(args.trace),
            "format": args.format,
            "requests": len(requests),
            "durationSeconds": round(horizon, 1),
            "rateScale": args.rate_scale,
            "timeScale": args.time_scale,
            "seed": args.seed,
        },
        "model": model.name,
        "gpu": chosen.chosen.summary,
        "quantization": chosen.chosen.quantization,
        "slo": {"ttftSeconds": scenario.slo_ttft, "percentile": scenario.slo_percentile},
        "scenario": args.scenario,
        "currency": catalog.currency,
        "wallSeconds": round(time.perf_counter() - started, 2),
        "policies": results,
    }
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1), encoding="utf-8")
    if args.plot:
        plot(report, [r.arrival for r in requests], Path(args.plot), scenario.slo_ttft)
    if args.output in ("json", "yaml"):
        write_structured(report, args.output, out)
    elif args.output == "name":
        out.write("".join(name + "\n" for name in results))
    else:
        out.write(
            f"{model.name} on {chosen.chosen.summary} ({chosen.chosen.quantization}), "
            f"{len(requests)} requests over {horizon / 3600:.2f} h, TTFT SLO "
            f"{scenario.slo_ttft:g}s\n"
        )
        out.write(table(results, catalog.currency) + "\n")
    return 0


def simulation_spec(args: argparse.Namespace, catalog: Catalog) -> DistilledModelDeploymentSpec:
    """The DMD the simulation sizes: ``-f dmd.yaml`` if given, with flags over it."""
    base: dict[str, Any] = {}
    if args.filename:
        dmds = load_manifests(args.filename)
        if len(dmds) != 1:
            raise UsageError(f"-f {args.filename}: holds {len(dmds)} DMDs; simulate takes one")
        base = dmds[0][1].spec.to_wire()
    elif not (args.model and args.gpu):
        raise UsageError("name the model and GPU with --model and --gpu, or give -f DMD.yaml")
    if args.model:
        entry = catalog.model(args.model)
        if entry is None:
            known = ", ".join(sorted(catalog.models))
            raise UsageError(f"--model {args.model!r} is not in the catalog: one of {known}")
        base["model"] = {**base.get("model", {}), "name": entry.name}
    if args.gpu:
        if catalog.gpu(args.gpu) is None:
            known = ", ".join(sorted(catalog.gpus))
            raise UsageError(f"--gpu {args.gpu!r} is not in the catalog: one of {known}")
        base["placement"] = {**base.get("placement", {}), "gpuTypes": [args.gpu]}
    overrides: list[tuple[str, str, Any]] = [
        ("model", "quantization", args.quantization),
        ("placement", "gpusPerReplica", args.gpus),
        ("serving", "maxModelLen", args.max_model_len),
        ("serving", "maxConcurrency", args.max_concurrency),
        ("scaling", "objective", args.objective),
    ]
    for section, key, value in overrides:
        if value is not None:
            base[section] = {**base.get(section, {}), key: value}
    slo = {
        k: v
        for k, v in (("ttftSeconds", args.slo_ttft), ("percentile", args.slo_percentile))
        if v is not None
    }
    if slo:
        scaling = base.get("scaling", {})
        base["scaling"] = {**scaling, "slo": {**scaling.get("slo", {}), **slo}}
    try:
        return DistilledModelDeploymentSpec.model_validate(base)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, args.filename or "flags")) from exc


def _pairs(
    items: Sequence[str], what: str, *, low: float = 0.0, high: float = math.inf
) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            number_ = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise UsageError(f"{what} {item!r}: expected NAME=NUMBER")
        if not (math.isfinite(number_) and low <= number_ < high):
            limit = f"< {high:g}" if math.isfinite(high) else "finite"
            raise UsageError(f"{what} {item!r}: the number must be >= {low:g} and {limit}")
        out[key] = number_
    return out


def cmd_recommend(args: argparse.Namespace, out: TextIO) -> int:
    """Rank (model, quantization, GPUs) for the requirements; emit the winner's DMD."""
    from distillery.recommend import manifest, recommend, tiered

    catalog = _catalog(args.catalog)
    quality, floors, req = _recommend_inputs(args, catalog)
    if args.tiers is not None:
        hard_floors = _pairs(args.hard_floor, "--hard-floor")
        try:
            doc = tiered(req, args.tiers, hard_floors, catalog, quality, args.name or "reasoning")
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        doc["currency"] = catalog.currency
        if args.manifest:
            text = yaml.safe_dump_all(doc["manifests"], sort_keys=False)
            if args.manifest == "-":
                out.write(text)
                return 0
            Path(args.manifest).write_text(text, encoding="utf-8")
            print(f"wrote {args.manifest} (two DMDs and their ReasoningRoute)", file=sys.stderr)
        if args.output in ("json", "yaml"):
            write_structured(doc, args.output, out)
        elif args.output == "name":
            out.write(f"{doc['routine']['model']}\n{doc['hard']['model']}\n")
        else:
            out.write(_tiers_table(doc, catalog.currency) + "\n")
        return 0
    ranked = recommend(req, catalog, quality, simulate_top=args.simulate_top)
    winners = [c for c in ranked if not c.excluded]
    dmd = manifest(winners[0], req, args.name) if winners else None
    if args.manifest:
        if dmd is None:
            raise InputError("nothing meets the requirements: run without --manifest to see why")
        text = yaml.safe_dump(dmd, sort_keys=False)
        if args.manifest == "-":
            out.write(text)
            return 0
        Path(args.manifest).write_text(text, encoding="utf-8")
        print(f"wrote {args.manifest}", file=sys.stderr)
    if args.output in ("json", "yaml"):
        doc = {
            "floors": floors,
            "source": quality.source,
            "currency": catalog.currency,
            "candidates": [c.to_json() for c in ranked],
            "manifest": dmd,
        }
        write_structured(doc, args.output, out)
    elif args.output == "name":
        out.write("".join(f"{c.model}\n" for c in winners))
    else:
        out.write(_candidates_table(ranked, catalog.currency, wide=args.output == "wide"))
    return 0 if winners else 1


def _recommend_inputs(
    args: argparse.Namespace, catalog: Catalog
) -> tuple[QualityTable, dict[str, float], RecommendRequirements]:
    """Quality scores, floors and requirements from the flags; every rule checked."""
    from distillery.recommend import Requirements, floors_for, load_quality

    extra = []
    for path in args.quality:
        try:
            extra.append(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if args.quant_penalty:
        extra.append(
            yaml.safe_dump(
                {"quantizationPenalty": _pairs(args.quant_penalty, "--quant-penalty", high=1.0)}
            )
        )
    quality = load_quality(extra)
    explicit = _pairs(args.floor, "--floor")
    try:
        floors = floors_for(args.domain, explicit, quality, args.domain_floor)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if not floors:
        raise InputError(
            "give at least one quality floor: --floor BENCH=SCORE or --domain with --domain-floor"
        )
    _check_recommend_flags(args, catalog)
    try:
        req = Requirements(
            floors=floors,
            peak_rps=args.peak_rps,
            mean_rps=args.mean_rps or args.peak_rps / 2,
            input_tokens=args.input_tokens,
            output_tokens=args.output_tokens,
            slo_ttft=args.slo_ttft,
            gpu_types=tuple(args.gpu_type),
            max_cost_per_hour=args.budget,
            max_model_len=args.max_model_len,
            max_concurrency=args.max_concurrency,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return quality, floors, req


def _check_recommend_flags(args: argparse.Namespace, catalog: Catalog) -> None:
    """Rules across flags, each a usage error that names them."""
    if args.mean_rps is not None and args.mean_rps > args.peak_rps:
        raise UsageError(
            f"--mean-rps {args.mean_rps:g} exceeds --peak-rps {args.peak_rps:g}: "
            "the mean cannot be above the peak"
        )
    if args.tiers is None and args.hard_floor:
        raise UsageError("--hard-floor only applies with --tiers HARD_SHARE")
    if args.tiers is not None and not args.hard_floor:
        raise UsageError(
            "--tiers needs --hard-floor BENCH=SCORE: the floor the hard share must clear "
            "(above the routine --floor), or the hard tier is just the cheapest model"
        )
    unknown = [g for g in args.gpu_type if catalog.gpu(g) is None]
    if unknown:
        raise UsageError(
            f"--gpu-type {', '.join(unknown)}: not in the catalog; one of "
            f"{', '.join(sorted(catalog.gpus))}"
        )


def _candidates_table(ranked: Sequence[Candidate], currency: str, *, wide: bool) -> str:
    """The ranked candidates that meet the requirements, then the excluded and why."""
    rows = [
        [
            "#",
            "MODEL",
            "QUANT",
            "GPU",
            "REPL PEAK/MEAN",
            "COST/H MEAN",
            "COST/H PEAK",
            f"{currency}/MTOK",
            "SLO EST",
            "SCORES",
        ]
    ]
    winners = [c for c in ranked if not c.excluded]
    for i, c in enumerate(winners, 1):
        rows.append(
            [
                str(i),
                c.model if wide else c.model.split("/")[-1],
                c.quantization,
                f"{c.gpus}x {c.gpu}",
                f"{c.replicas_peak}/{c.replicas_mean}",
                f"{c.cost_mean:.2f}",
                f"{c.cost_peak:.2f}",
                f"{c.cost_per_mtok:.2f}" if c.cost_per_mtok is not None else "-",
                f"{100 * c.attainment:.1f}%" if c.attainment is not None else "-",
                ", ".join(f"{k} {v:.1f}" for k, v in c.scores.items()),
            ]
        )
    text = _table(rows) + "\n\nexcluded:\n"
    for c in ranked:
        if c.excluded:
            name = c.model if wide else c.model.split("/")[-1]
            text += f"  {name} {c.quantization}: {c.excluded}\n"
    return text


def _tiers_table(doc: Mapping[str, Any], currency: str) -> str:
    rows = [["TIER", "SHARE", "MODEL", "QUANT", "GPU", "REPL PEAK/MEAN", "COST/H MEAN"]]
    share = float(doc["hardShare"])
    tiers: list[tuple[str, float, Mapping[str, Any] | None]] = [
        ("routine", 1 - share, doc["routine"]),
        ("hard", share, doc["hard"]),
        ("one model for all", 1.0, doc["singleModelForAll"]),
    ]
    for tier, fraction, c in tiers:
        if c is None:
            rows.append(
                [tier, f"{100 * fraction:.0f}%", "(none meets every floor)", "", "", "", ""]
            )
            continue
        rows.append(
            [
                tier,
                f"{100 * fraction:.0f}%",
                str(c["model"]).split("/")[-1],
                str(c["quantization"]),
                f"{c['gpusPerReplica']}x {c['gpuType']}",
                f"{c['replicasAtPeak']}/{c['replicasAtMean']}",
                f"{c['costPerHourAtMean']:.2f}",
            ]
        )
    return (
        _table(rows)
        + f"\n\ntiered: {doc['costPerHourAtMean']:.2f} {currency}/h at mean, "
        + f"{doc['costPerHourAtPeak']:.2f} at peak"
    )


def cmd_crd(args: argparse.Namespace, out: TextIO) -> int:
    text = crd_yaml()
    if args.reference:
        Path(args.reference).write_text(reference_markdown() + "\n", encoding="utf-8")
        print(f"wrote {args.reference}", file=sys.stderr)
    if args.chart_dir:
        target = Path(args.chart_dir) / CHART_CRD_FILE
        target.write_text(crd_chart_template(), encoding="utf-8")
        print(f"wrote {target}", file=sys.stderr)
    if args.output_dir:
        for name, body in ((CRD_FILE, text), (ROUTE_CRD_FILE, route_crd_yaml())):
            target = Path(args.output_dir) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body, encoding="utf-8")
            print(f"wrote {target}", file=sys.stderr)
    else:
        out.write(text + route_crd_yaml().split("\n", 2)[2])
    return 0


def _manifest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", help="manifest files or folders ('-': standard input)")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        help="manifest file or folder, as kubectl takes it (repeatable; '-': standard input)",
    )


def _catalog_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="FILE",
        help="extra catalog YAML (models/gpus/prices), repeatable",
    )


def _output_arg(p: argparse.ArgumentParser, formats: Sequence[str] = OUTPUT_FORMATS) -> None:
    p.add_argument("-o", "--output", choices=formats, default=formats[0], help="output format")


def _settings_flags(p: argparse.ArgumentParser) -> None:
    """One flag per operator setting, generated from the Settings fields."""
    from typing import get_args

    from distillery.settings import PREFIX, Settings

    for name, info in Settings.model_fields.items():
        env = PREFIX + name.upper()
        help_text = f"{info.description or name} (env {env})"
        flag = Settings.flag(name)
        names = [flag, "-n"] if name == "namespaces" else [flag]
        choices = get_args(info.annotation)
        if info.annotation is bool:
            p.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        elif name in ("namespaces", "catalog_files"):
            p.add_argument(
                *names, dest=name, action="append", default=[], help=help_text + "; repeatable"
            )
        elif choices and all(isinstance(c, str) for c in choices):
            p.add_argument(*names, dest=name, choices=choices, help=help_text)
        elif name.endswith("_port"):
            p.add_argument(*names, dest=name, type=number(int, ge=0, le=65535), help=help_text)
        elif info.annotation is int:
            p.add_argument(*names, dest=name, type=int, help=help_text)
        elif info.annotation is float:
            p.add_argument(*names, dest=name, type=number(gt=0), help=help_text)
        else:
            p.add_argument(*names, dest=name, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillery", description="Serve distilled reasoning models on Kubernetes GPUs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    subcommands = (
        _plan_parser, _render_parser, _run_parser, _simulate_parser, _recommend_parser,
        _crd_parser, _cache_fill_parser,
    )  # fmt: skip
    for add in subcommands:
        add(sub)
    return parser


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _plan_parser(sub: Subparsers) -> None:
    p = sub.add_parser("plan", help="size DMD manifests onto the cheapest GPUs that fit")
    _manifest_args(p)
    _output_arg(p)
    p.add_argument(
        "--all", action="store_true", help="list every option tried, not one per GPU type"
    )
    _catalog_arg(p)
    p.set_defaults(func=cmd_plan)


def _render_parser(sub: Subparsers) -> None:
    r = sub.add_parser("render", help="print what the operator applies for DMDs")
    _manifest_args(r)
    _output_arg(r, ("yaml", "json", "name"))
    r.add_argument("-n", "--namespace", help="namespace for manifests that name none")
    r.add_argument(
        "--pod-monitor",
        action="store_true",
        help="also render a PodMonitor (default: DISTILLERY_POD_MONITOR=true)",
    )
    r.add_argument(
        "--no-http-route",
        dest="http_route",
        action="store_false",
        help="render as on a cluster without the Gateway API (no per-track Services or "
        "HTTPRoute for spec.rollout.canary.httpRoute, no HTTPRoute for a ReasoningRoute)",
    )
    r.add_argument(
        "--no-inference-extension",
        dest="inference_extension",
        action="store_false",
        help="render ReasoningRoutes as on a cluster without the Gateway API Inference "
        "Extension (an HTTPRoute to each tier's Service; no InferencePool or picker)",
    )
    r.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="ENGINE=IMAGE",
        help="engine image (default: DISTILLERY_IMAGE_<ENGINE>, then the built-in)",
    )
    r.add_argument(
        "--cache-storage-class",
        help="StorageClass of weight caches that name none (default: "
        "DISTILLERY_CACHE_STORAGE_CLASS)",
    )
    r.add_argument(
        "--user-template",
        action="append",
        default=[],
        metavar="CM=FILE",
        help="content of a templateRef ConfigMap's key, repeatable (default: a ConfigMap "
        "of that name in the manifests given)",
    )
    _catalog_arg(r)
    r.set_defaults(func=cmd_render)


def _run_parser(sub: Subparsers) -> None:
    o = sub.add_parser(
        "run", help="run the operator (every setting: flag, else DISTILLERY_* environment)"
    )
    _settings_flags(o)
    o.set_defaults(func=cmd_run)


def _simulate_parser(sub: Subparsers) -> None:
    m = sub.add_parser("simulate", help="replay a trace under each scaling policy")
    m.add_argument("--trace", required=True, help="trace file (or ServeGen folder)")
    m.add_argument("--format", required=True, choices=["azure", "servegen", "jsonl", "csv"])
    m.add_argument("-f", "--filename", help="a DMD to take the model, GPUs, serving and SLO from")
    m.add_argument("--model", help="catalog model name (required without -f)")
    m.add_argument("--gpu", help="catalog GPU type (required without -f)")
    m.add_argument(
        "--gpus", type=number(int, ge=1, le=8), help="GPUs per replica (default: smallest fit)"
    )
    m.add_argument("--quantization", choices=["auto", "none", "fp8", "int8", "awq", "gptq"])
    m.add_argument("--max-model-len", type=number(int, ge=256), help="default 32768")
    m.add_argument("--max-concurrency", type=number(int, ge=1, le=4096), help="default 64")
    m.add_argument("--slo-ttft", type=number(gt=0), help="seconds; default 2")
    m.add_argument("--slo-percentile", type=number(gt=0, lt=100), help="default 95")
    m.add_argument("--objective", choices=["latency", "balanced", "cost"])
    m.add_argument(
        "--max-replicas", type=number(int, ge=1, le=10000), help="default 200 (-f: the DMD's)"
    )
    m.add_argument("--rate-scale", type=number(gt=0), default=1.0)
    m.add_argument("--time-scale", type=number(gt=0), default=1.0)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dt", type=number(gt=0, le=60), default=1.0, help="tick, seconds")
    m.add_argument("--policy", default="all", help="all, or names separated by commas")
    m.add_argument(
        "--scenario",
        choices=["warm", "cold"],
        default="warm",
        help="warm: every policy starts with the replicas the first minute needs, ready; "
        "cold: one replica under full load",
    )
    _output_arg(m, ("table", "json", "yaml", "name"))
    m.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE")
    m.add_argument("--plot", metavar="FILE", help="write a PNG plot to FILE")
    _catalog_arg(m)
    m.add_argument("--no-progress", dest="progress", action="store_false")
    m.set_defaults(func=cmd_simulate)


def _recommend_parser(sub: Subparsers) -> None:
    rc = sub.add_parser("recommend", help="choose model, quantization and GPUs from needs")
    rc.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="BENCH=SCORE",
        help="quality floor, e.g. aime2024=50 (repeatable)",
    )
    rc.add_argument("--domain", choices=["math", "code", "science", "general"])
    rc.add_argument(
        "--domain-floor", type=number(ge=0), help="floor for each benchmark of --domain"
    )
    rc.add_argument("--peak-rps", type=number(gt=0), required=True, help="requests/s at peak")
    rc.add_argument("--mean-rps", type=number(gt=0), help="default: half the peak")
    rc.add_argument("--input-tokens", type=number(int, ge=1), default=500)
    rc.add_argument("--output-tokens", type=number(int, ge=1), default=2000)
    rc.add_argument("--slo-ttft", type=number(gt=0), default=2.0, help="seconds")
    rc.add_argument("--gpu-type", action="append", default=[], help="allowed GPU type")
    rc.add_argument("--budget", type=number(gt=0), help="max cost per hour at peak")
    rc.add_argument("--max-model-len", type=number(int, ge=256), default=32768)
    rc.add_argument("--max-concurrency", type=number(int, ge=1, le=4096), default=64)
    rc.add_argument(
        "--quality",
        action="append",
        default=[],
        metavar="FILE",
        help="your own scores (same shape as catalog/data/quality.yaml)",
    )
    rc.add_argument("--quant-penalty", action="append", default=[], metavar="QUANT=FRACTION")
    rc.add_argument(
        "--tiers",
        type=number(gt=0, lt=1),
        metavar="HARD_SHARE",
        help="tiered plan: this share of traffic (0 to 1) goes to a stronger model",
    )
    rc.add_argument("--hard-floor", action="append", default=[], metavar="BENCH=SCORE")
    rc.add_argument("--simulate-top", type=number(int, ge=0, le=50), default=3)
    rc.add_argument("--name", default="recommended", help="metadata.name of the manifest")
    _output_arg(rc)
    rc.add_argument(
        "--manifest", metavar="FILE", help="write the winner's DMD to FILE ('-': standard output)"
    )
    _catalog_arg(rc)
    rc.set_defaults(func=cmd_recommend)


def _crd_parser(sub: Subparsers) -> None:
    c = sub.add_parser("crd", help="print the generated CustomResourceDefinitions")
    c.add_argument("--output-dir", help=f"write {CRD_FILE} and {ROUTE_CRD_FILE} here")
    c.add_argument("--reference", help="also write the field reference (Markdown) here")
    c.add_argument("--chart-dir", help=f"also write the Helm template {CHART_CRD_FILE} here")
    c.set_defaults(func=cmd_crd)


def _cache_fill_parser(sub: Subparsers) -> None:
    f = sub.add_parser(
        "cache-fill",
        help="fill a weight cache volume with a model revision (the cache's Job runs this)",
    )
    f.add_argument("--source", required=True, help="hf://org/name[/file] or file:///path")
    f.add_argument("--revision", help="Hub revision (branch, tag or commit); hf:// only")
    f.add_argument("--dest", required=True, help="the cache volume's mount path")
    f.add_argument(
        "--termination-log",
        default="/dev/termination-log",
        help="where the one-line outcome goes (the operator reads it from the pod)",
    )
    f.add_argument(
        "--hold",
        action="store_true",
        help="once complete, stay running until stopped (a node-local copy's DaemonSet pod, "
        "Ready while its marker is there)",
    )
    f.set_defaults(func=cmd_cache_fill)


def cmd_cache_fill(args: argparse.Namespace, out: TextIO) -> int:
    from distillery import cachefill  # the fill's HTTP client is not the CLI's concern

    return cachefill.main(
        args.source, args.revision, args.dest, args.termination_log, hold=args.hold
    )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, out or sys.stdout))
    except UsageError as exc:
        print(f"distillery {args.command}: {exc}", file=sys.stderr)
        return 2
    except (InputError, CatalogError) as exc:
        print(str(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
