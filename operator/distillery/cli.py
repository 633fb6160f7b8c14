"""The ``distillery`` command: plan, crd (and, as they land, render, run, simulate).

Sub-commands read manifests from files or standard input and print to standard output;
errors go to standard error with exit code 1 (bad input) or 2 (usage), so they compose
in GitOps pipelines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from distillery.api.crd import (
    CHART_CRD_FILE,
    CRD_FILE,
    crd_chart_template,
    crd_yaml,
    reference_markdown,
)
from distillery.api.types import KIND, DistilledModelDeployment, DistilledModelDeploymentSpec
from distillery.catalog import Catalog, CatalogError, load_catalog
from distillery.render import RenderError, RenderOptions, manifests_yaml, render
from distillery.sizing import Plan, PlanError, UnknownModelError, plan


class InputError(ValueError):
    """A manifest could not be read or is not a valid DistilledModelDeployment."""


class UsageError(InputError):
    """A flag's value can never work (exit 2, as argparse exits for a bad flag)."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, naming the field path the way a manifest spells it."""
    lines = [f"{source}: invalid DistilledModelDeployment:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def load_manifests(path: str) -> list[tuple[str, DistilledModelDeployment]]:
    """Every DistilledModelDeployment in a YAML stream; other kinds are skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from exc
    out: list[tuple[str, DistilledModelDeployment]] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        name = (doc.get("metadata") or {}).get("name", f"document {i}")
        source = f"{path} ({name})"
        doc = {k: v for k, v in doc.items() if k != "status"}
        try:
            out.append((source, DistilledModelDeployment.model_validate(doc)))
        except ValidationError as exc:
            raise InputError(format_validation_error(exc, source)) from exc
    if not out:
        raise InputError(f"{path}: no {KIND} found")
    return out


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def render_plan_table(name: str, p: Plan) -> str:
    c = p.chosen
    cur = p.currency
    per_tok = (
        f"{c.cost_per_million_tokens:.3f} {cur}/Mtok"
        if c.cost_per_million_tokens is not None
        else "n/a"
    )
    lines = [
        f"{name}: {p.model.name}",
        f"  placement   {c.gpu_count}x {c.gpu.name} ({c.gpu.product}), tensor parallel "
        f"{c.tensor_parallel}, quantization {c.quantization}",
        f"  memory      weights {c.weights_gib:.1f} GiB + KV {c.kv_needed_gib:.1f} GiB + "
        f"overhead {c.overhead_gib:.1f} GiB of {c.budget_gib:.1f} GiB (free "
        f"{c.free_gib:.1f} GiB)",
        f"  capacity    {c.kv_cache_tokens} KV tokens, {c.max_concurrency} sequences of "
        f"{p.requirements.typical_tokens} tokens (asked {p.requirements.max_concurrency}), "
        f"~{c.decode_tokens_per_second:.0f} output tok/s",
        f"  cost        {c.cost_per_replica_hour:.2f} {cur}/replica-hour, ~{per_tok}",
        "  alternatives:",
    ]
    rows = [["GPU", "QUANT", "FITS", "COST/H", "WHY NOT"]]
    for alt in p.alternatives:
        rows.append(
            [
                alt.summary,
                alt.quantization,
                "yes" if alt.feasible else "no",
                f"{alt.cost_per_replica_hour:.2f}",
                alt.reason,
            ]
        )
    lines += ["    " + line for line in _table(rows).splitlines()]
    return "\n".join(lines)


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
    failed = False
    for path in args.files:
        for source, dmd in load_manifests(path):
            try:
                p = plan(dmd.spec, catalog)
            except (PlanError, UnknownModelError) as exc:
                failed = True
                print(f"{source}: {exc}", file=sys.stderr)
                results.append({"name": dmd.name, "error": str(exc)})
                continue
            entry = {"name": dmd.name, **p.to_json()}
            results.append(entry)
            texts.append(render_plan_table(dmd.name, p))
    if args.output == "json":
        out.write(json.dumps(results[0] if len(results) == 1 else results, indent=2) + "\n")
    elif args.output == "yaml":
        out.write(yaml.safe_dump(results[0] if len(results) == 1 else results, sort_keys=False))
    else:
        out.write("\n\n".join(texts) + ("\n" if texts else ""))
    return 1 if failed else 0


def cmd_render(args: argparse.Namespace, out: TextIO) -> int:
    catalog = _catalog(args.catalog)
    options = RenderOptions(pod_monitor=args.pod_monitor)
    templates: dict[str, str] = {}
    for item in args.user_template:
        name, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--user-template {item!r}: expected CONFIGMAP=FILE")
        try:
            templates[name] = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    streams: list[str] = []
    failed = False
    for path in args.files:
        for source, dmd in load_manifests(path):
            if args.namespace and not dmd.metadata.get("namespace"):
                dmd = dmd.model_copy(
                    update={"metadata": {**dmd.metadata, "namespace": args.namespace}}
                )
            ref = dmd.spec.serving.template_ref
            user_template = None
            if ref is not None:
                if ref.name not in templates:
                    print(
                        f"{source}: templateRef {ref.name} needs --user-template {ref.name}=FILE",
                        file=sys.stderr,
                    )
                    failed = True
                    continue
                user_template = templates[ref.name]
            try:
                rendered = render(
                    dmd, plan(dmd.spec, catalog), options=options, user_template=user_template
                )
            except (PlanError, UnknownModelError, RenderError) as exc:
                print(f"{source}: {exc}", file=sys.stderr)
                failed = True
                continue
            streams.append(manifests_yaml(rendered))
    out.write("---\n".join(streams))
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    """Start the operator (kopf) with settings from DISTILLERY_* and the flags."""
    import logging
    import os

    from distillery.settings import PREFIX, Settings

    overrides = {
        "namespaces": args.namespace,
        "prometheus_url": args.prometheus_url,
        "autoscale_interval_seconds": args.autoscale_interval,
        "rollout_interval_seconds": args.rollout_interval,
        "catalog_files": args.catalog,
        "metrics_port": args.metrics_port,
        "health_port": args.health_port,
        "peering": args.peering,
        "kubeconfig": args.kubeconfig,
        "log_level": args.log_level,
    }
    settings = Settings.from_env(**overrides)
    # Handlers read their registration-time settings (timer intervals) from the
    # environment: export the merged settings before importing them.
    for name, value in settings.model_dump().items():
        os.environ[PREFIX + name.upper()] = (
            ",".join(value) if isinstance(value, list) else str(value)
        )
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.kubeconfig:
        # kopf authenticates its watches from KUBECONFIG: one identity for everything.
        os.environ["KUBECONFIG"] = settings.kubeconfig
    import kopf

    import distillery.handlers  # noqa: F401 - registers the handlers

    liveness = (
        f"http://{settings.metrics_bind}:{settings.health_port}/healthz"
        if settings.health_port
        else None
    )
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=not settings.peering,
        peering_name=settings.peering or None,
        priority=settings.priority,
        liveness_endpoint=liveness,
        memo=kopf.Memo(settings=settings),
    )
    return 0


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
    model = catalog.model(args.model)
    if model is None:
        known = ", ".join(sorted(catalog.models))
        raise UsageError(f"--model {args.model!r} is not in the catalog: one of {known}")
    gpu = catalog.gpu(args.gpu)
    if gpu is None:
        raise InputError(f"--gpu {args.gpu!r}: one of {', '.join(sorted(catalog.gpus))}")
    spec = DistilledModelDeploymentSpec.model_validate(
        {
            "model": {"name": model.name, "quantization": args.quantization},
            "serving": {"maxModelLen": args.max_model_len, "maxConcurrency": args.max_concurrency},
            "placement": {
                "gpuTypes": [gpu.name],
                **({"gpusPerReplica": args.gpus} if args.gpus else {}),
            },
        }
    )
    try:
        chosen = plan(spec, catalog)
    except PlanError as exc:
        raise InputError(str(exc)) from exc
    try:
        requests = load(Path(args.trace), args.format, args.rate_scale, args.time_scale, args.seed)
    except (OSError, WorkloadError) as exc:
        raise InputError(f"{args.trace}: {exc}") from exc
    if not requests:
        raise InputError(f"{args.trace}: no requests")
    scenario = Scenario(
        model=model,
        option=chosen.chosen,
        max_concurrency=args.max_concurrency,
        typical_tokens=chosen.requirements.typical_tokens,
        slo_ttft=args.slo_ttft,
        slo_percentile=args.slo_percentile,
        objective=args.objective,
        max_replicas=args.max_replicas,
        dt=args.dt,
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
        "slo": {"ttftSeconds": args.slo_ttft, "percentile": args.slo_percentile},
        "scenario": args.scenario,
        "currency": catalog.currency,
        "wallSeconds": round(time.perf_counter() - started, 2),
        "policies": results,
    }
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1), encoding="utf-8")
    if args.plot:
        plot(report, [r.arrival for r in requests], Path(args.plot), args.slo_ttft)
    out.write(
        f"{model.name} on {chosen.chosen.summary} ({chosen.chosen.quantization}), "
        f"{len(requests)} requests over {horizon / 3600:.2f} h, TTFT SLO "
        f"{args.slo_ttft:g}s\n"
    )
    out.write(table(results, catalog.currency) + "\n")
    return 0


def _pairs(items: Sequence[str], what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"{what} {item!r}: expected NAME=NUMBER")
    return out


def cmd_recommend(args: argparse.Namespace, out: TextIO) -> int:
    """Rank (model, quantization, GPUs) for the requirements; emit the winner's DMD."""
    from distillery.recommend import (
        Requirements,
        floors_for,
        load_quality,
        manifest,
        recommend,
        tiered,
    )

    catalog = _catalog(args.catalog)
    extra = []
    for path in args.quality:
        try:
            extra.append(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if args.quant_penalty:
        extra.append(
            yaml.safe_dump({"quantizationPenalty": _pairs(args.quant_penalty, "--quant-penalty")})
        )
    quality = load_quality(extra)
    try:
        floors = floors_for(args.domain, _pairs(args.floor, "--floor"), quality, args.domain_floor)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if not floors:
        raise InputError(
            "give at least one quality floor: --floor BENCH=SCORE or --domain with --domain-floor"
        )
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
    if args.tiers is not None:
        try:
            doc = tiered(req, args.tiers, _pairs(args.hard_floor, "--hard-floor"), catalog, quality)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    ranked = recommend(req, catalog, quality, simulate_top=args.simulate_top)
    winners = [c for c in ranked if not c.excluded]
    if args.output == "yaml":
        if not winners:
            raise InputError("nothing meets the requirements: see -o table for why")
        out.write(yaml.safe_dump(manifest(winners[0], req, args.name), sort_keys=False))
        return 0
    if args.output == "json":
        out.write(
            json.dumps(
                {
                    "floors": floors,
                    "source": quality.source,
                    "candidates": [c.to_json() for c in ranked],
                },
                indent=2,
            )
            + "\n"
        )
        return 0 if winners else 1
    rows = [
        [
            "#",
            "MODEL",
            "QUANT",
            "GPU",
            "REPL PEAK/MEAN",
            "COST/H MEAN",
            "COST/H PEAK",
            "$/MTOK",
            "SLO EST",
            "SCORES",
        ]
    ]
    for i, c in enumerate(winners, 1):
        rows.append(
            [
                str(i),
                c.model.split("/")[-1],
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
    out.write(_table(rows) + "\n\nexcluded:\n")
    for c in ranked:
        if c.excluded:
            out.write(f"  {c.model.split('/')[-1]} {c.quantization}: {c.excluded}\n")
    return 0 if winners else 1


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
        target = Path(args.output_dir) / CRD_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}", file=sys.stderr)
    else:
        out.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillery", description="Serve distilled reasoning models on Kubernetes GPUs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="size DMD manifests onto the cheapest GPUs that fit")
    p.add_argument("files", nargs="+", help="manifest files ('-' for standard input)")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    p.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="FILE",
        help="extra catalog YAML (models/gpus/prices), repeatable",
    )
    p.set_defaults(func=cmd_plan)
    r = sub.add_parser("render", help="print the workload a DMD renders to, as YAML")
    r.add_argument("files", nargs="+", help="manifest files ('-' for standard input)")
    r.add_argument("-n", "--namespace", help="namespace for manifests that name none")
    r.add_argument("--pod-monitor", action="store_true", help="also render a PodMonitor")
    r.add_argument(
        "--user-template",
        action="append",
        default=[],
        metavar="CM=FILE",
        help="content of a templateRef ConfigMap, repeatable",
    )
    r.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="FILE",
        help="extra catalog YAML (models/gpus/prices), repeatable",
    )
    r.set_defaults(func=cmd_render)
    o = sub.add_parser("run", help="run the operator")
    o.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="namespace to watch, repeatable (default: all)",
    )
    o.add_argument("--prometheus-url", help="Prometheus base URL")
    o.add_argument("--autoscale-interval", type=float, help="seconds between decisions")
    o.add_argument("--rollout-interval", type=float, help="seconds between canary analyses")
    o.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="FILE",
        help="extra catalog YAML (models/gpus/prices), repeatable",
    )
    o.add_argument("--metrics-port", type=int, help="operator metrics port (0: off)")
    o.add_argument("--health-port", type=int, help="liveness port (0: off)")
    o.add_argument("--peering", help="kopf peering name for HA (default: standalone)")
    o.add_argument("--kubeconfig", help="kubeconfig (default: in-cluster, then ~/.kube)")
    o.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    o.set_defaults(func=cmd_run)
    m = sub.add_parser("simulate", help="replay a trace under each scaling policy")
    m.add_argument("--trace", required=True, help="trace file (or ServeGen folder)")
    m.add_argument("--format", required=True, choices=["azure", "servegen", "jsonl", "csv"])
    m.add_argument("--model", required=True, help="catalog model name")
    m.add_argument("--gpu", required=True, help="catalog GPU type")
    m.add_argument("--gpus", type=int, help="GPUs per replica (default: smallest that fits)")
    m.add_argument("--quantization", default="auto")
    m.add_argument("--max-model-len", type=int, default=32768)
    m.add_argument("--max-concurrency", type=int, default=64)
    m.add_argument("--slo-ttft", type=float, default=2.0)
    m.add_argument("--slo-percentile", type=float, default=95.0)
    m.add_argument("--objective", choices=["latency", "balanced", "cost"], default="balanced")
    m.add_argument("--max-replicas", type=int, default=200)
    m.add_argument("--rate-scale", type=float, default=1.0)
    m.add_argument("--time-scale", type=float, default=1.0)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dt", type=float, default=1.0, help="tick, seconds")
    m.add_argument("--policy", default="all", help="all, or names separated by commas")
    m.add_argument(
        "--scenario",
        choices=["warm", "cold"],
        default="warm",
        help="warm: every policy starts with the replicas the first minute needs, ready; "
        "cold: one replica under full load",
    )
    m.add_argument("--report", "-o", "--output", dest="output", help="write the JSON report here")
    m.add_argument("--plot", help="write a PNG plot here")
    m.add_argument("--catalog", action="append", default=[], metavar="FILE")
    m.add_argument("--no-progress", dest="progress", action="store_false")
    m.set_defaults(func=cmd_simulate)
    rc = sub.add_parser("recommend", help="choose model, quantization and GPUs from needs")
    rc.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="BENCH=SCORE",
        help="quality floor, e.g. aime2024=50 (repeatable)",
    )
    rc.add_argument("--domain", choices=["math", "code", "science", "general"])
    rc.add_argument("--domain-floor", type=float, help="floor for each benchmark of --domain")
    rc.add_argument("--peak-rps", type=float, required=True)
    rc.add_argument("--mean-rps", type=float, help="default: half the peak")
    rc.add_argument("--input-tokens", type=int, default=500)
    rc.add_argument("--output-tokens", type=int, default=2000)
    rc.add_argument("--slo-ttft", type=float, default=2.0)
    rc.add_argument("--gpu-type", action="append", default=[], help="allowed GPU type")
    rc.add_argument("--budget", type=float, help="max cost per hour at peak")
    rc.add_argument("--max-model-len", type=int, default=32768)
    rc.add_argument("--max-concurrency", type=int, default=64)
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
        type=float,
        metavar="HARD_SHARE",
        help="tiered plan: this share of traffic goes to a stronger model",
    )
    rc.add_argument("--hard-floor", action="append", default=[], metavar="BENCH=SCORE")
    rc.add_argument("--simulate-top", type=int, default=3)
    rc.add_argument("--name", default="recommended")
    rc.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    rc.add_argument("--catalog", action="append", default=[], metavar="FILE")
    rc.set_defaults(func=cmd_recommend)
    c = sub.add_parser("crd", help="print the generated CustomResourceDefinition")
    c.add_argument("--output-dir", help=f"write {CRD_FILE} into this folder")
    c.add_argument("--reference", help="also write the field reference (Markdown) here")
    c.add_argument("--chart-dir", help=f"also write the Helm template {CHART_CRD_FILE} here")
    c.set_defaults(func=cmd_crd)
    return parser


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
