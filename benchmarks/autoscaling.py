"""Autoscaling benchmark: every trace in the repository and the generated stress
scenarios, x a 7B, a 32B and a 70B model on fitting GPUs, x every policy, warm and cold.

Each workload's rate is scaled until the instant reference's peak needs 6 to 12
replicas (scaling decisions matter; no more than needed). Every policy then replays the
same requests from the same start (``distillery.simulate.engine``): warm (the replicas
the first minute needs, ready) for every workload, and cold (one replica under full
load) for the workloads that start at full load. Cost is relative to ``clairvoyant``.

Writes ``reports/bench-autoscaling.json`` (every cell, every policy), the markdown
tables in ``reports/bench-autoscaling.md`` (docs/autoscaling.md quotes them) and one
plot per cell (cost vs attainment with the Pareto front; replicas over time).

Nothing here is tuned per trace: the policy's parameters come from the model, the GPU
and the SLO; the anchors run as documented and tuned to the replica's capacity.

Run: ``make bench`` or ``.venv/bin/python benchmarks/autoscaling.py [--quick]``
(--quick: the first 2 h of each workload, the 7B only; ``--screen`` screens a policy
change on every cell in minutes: distillery against clairvoyant, whose results are
cached under ``.cache/bench/clairvoyant`` and reused while nothing they depend on
changes; the figures are the full run's to the digit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distillery.api.types import DistilledModelDeploymentSpec
from distillery.catalog import load_catalog
from distillery.simulate.engine import (
    ANCHORS,
    POLICY_NAMES,
    Scenario,
    initial_replicas,
    make_policy,
    need_schedule,
    reference,
    replica_model,
    run_policy,
    simulate,
)
from distillery.simulate.report import plot, table
from distillery.simulate.scenarios import generate
from distillery.simulate.workload import Request, load
from distillery.sizing import plan

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "benchmarks" / "traces"

MODELS = [
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-l40s", "none"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "nvidia-h100-80gb", "fp8"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "nvidia-h100-80gb", "fp8"),
]
# (name, loader of requests at a rate multiplier, starting multiplier, scenarios)
TRACE_SET: list[tuple[str, str, float]] = [
    ("azure-2023-code", "azure", 1.0),
    ("servegen-deepseek-r1-day", "servegen", 0.05),
    ("mooncake-synthetic", "jsonl", 1.0),
]
STRESS_SET = ["step", "bursts", "diurnal", "drift", "long-prompt-tail", "full-load"]
COLD_AT_FULL_LOAD = {"full-load", "azure-2023-code", "mooncake-synthetic"}
MIN_PEAK, MAX_PEAK = 6, 12
SLO_TTFT = 2.0
MAX_CONCURRENCY = 64


def scenario(model: str, gpu: str, quant: str) -> Scenario:
    catalog = load_catalog()
    spec = DistilledModelDeploymentSpec.model_validate(
        {
            "model": {"name": model, "quantization": quant},
            "serving": {"maxModelLen": 32768, "maxConcurrency": MAX_CONCURRENCY},
            "placement": {"gpuTypes": [gpu]},
        }
    )
    p = plan(spec, catalog)
    return Scenario(
        model=p.model,
        option=p.chosen,
        max_concurrency=MAX_CONCURRENCY,
        typical_tokens=p.requirements.typical_tokens,
        slo_ttft=SLO_TTFT,
        max_replicas=200,
    )


def workload(name: str, s: Scenario, quick: bool) -> Callable[[float], list[Request]]:
    startup = replica_model(s).startup_seconds
    for trace, fmt, _ in TRACE_SET:
        if trace == name:
            path = {
                "azure": TRACES / "azure-2023-code.csv",
                "servegen": TRACES / "servegen-deepseek-r1",
                "jsonl": TRACES / "mooncake" / "synthetic_trace.jsonl",
            }[fmt]

            def from_trace(rate: float, path: Path = path, fmt: str = fmt) -> list[Request]:
                reqs = load(path, fmt, rate_scale=rate, seed=42)
                return [r for r in reqs if r.arrival < 2 * 3600] if quick else reqs

            return from_trace

    def stress(rate: float) -> list[Request]:
        reqs = generate(name, rate, seed=42, startup_seconds=startup)
        return [r for r in reqs if r.arrival < 2 * 3600] if quick else reqs

    return stress


def scaled(
    make: Callable[[float], list[Request]], s: Scenario, start: float
) -> tuple[list[Request], float]:
    """The rate multiplier at which the instant reference's peak is 6 to 12 replicas."""
    rate, reqs = start, make(start)
    for _ in range(8):
        peak = max(n for _, n in need_schedule(reqs, s))
        if MIN_PEAK <= peak <= MAX_PEAK:
            break
        rate *= 1.5 * MIN_PEAK / max(peak, 1)
        reqs = make(rate)
    return reqs, rate


def verdict(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours, ref = results["distillery"], results["clairvoyant"]

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return bool(
            a["cost"] <= b["cost"] and a["sloAttainmentFeasible"] >= b["sloAttainmentFeasible"]
        )

    anchors = [n for n in results if n.removesuffix("-tuned") in ANCHORS]
    return {
        "distilleryCostVsClairvoyant": round(ours["cost"] / ref["cost"], 3)
        if ref["cost"]
        else None,
        "distilleryAttainmentFeasible": ours["sloAttainmentFeasible"],
        "distilleryPeakVsClairvoyant": round(ours["peakReplicas"] / max(1, ref["peakReplicas"]), 2),
        "distilleryFlaps": ours["flaps"],
        "clairvoyantHeadroom": ref.get("headroom"),
        "clairvoyantReachedTarget": ref.get("reachedTarget"),
        "dominates": [n for n in anchors if dominates(ours, results[n])],
        "notDominated": [n for n in anchors if not dominates(ours, results[n])],
        "dominatedBy": [n for n in anchors if dominates(results[n], ours) and results[n] != ours],
    }


def markdown(cells: list[dict[str, Any]]) -> str:
    lines = [
        "| cell | start | requests | clairvoyant cost | distillery cost x | attainment (feasible) "
        "| peak x | flaps | best anchor (cost x, attainment) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        p, v = c["policies"], c["verdict"]
        ref = p["clairvoyant"]["cost"] or 1.0
        anchors = [(n, r) for n, r in p.items() if n.removesuffix("-tuned") in ANCHORS]
        best_anchor = "none run"
        if anchors:
            name, best = max(
                anchors, key=lambda nr: (nr[1]["sloAttainmentFeasible"], -nr[1]["cost"])
            )
            best_anchor = (
                f"{name} ({best['cost'] / ref:.2f}, {100 * best['sloAttainmentFeasible']:.1f}%)"
            )
        lines.append(
            f"| {c['cell']} | {c['scenario']} | {c['requests']} | {ref:.1f} | "
            f"{v['distilleryCostVsClairvoyant']:.2f} | "
            f"{100 * v['distilleryAttainmentFeasible']:.1f}% | "
            f"{v['distilleryPeakVsClairvoyant']:.1f} | "
            f"{v['distilleryFlaps']} | {best_anchor} |"
        )
    return "\n".join(lines) + "\n"


# Where a new replica reads its weights (distillery.sizing.startup): the Hub, an object
# store, a shared weight cache (spec.model.cache), a node-local copy.
WEIGHT_SOURCES = ("hf", "s3", "cache", "local")
SWEEP_CELLS = [("servegen-deepseek-r1-day", 0.05), ("bursts", 1.0), ("step", 1.0)]


def startup_sweep(out_dir: Path, quick: bool) -> None:
    """The weight cache's number: the same cells and models with the cold start of each
    weight source, from the same estimate the operator uses (weights / the source's
    bandwidth + the engine's start). Each row: distillery's cost and attainment, its cost
    against the Hub row of the same cell (the saving) and against its own clairvoyant."""
    rows = []
    models = MODELS[:1] if quick else MODELS
    for model, gpu, quant in models:
        for name, start in SWEEP_CELLS:
            base = scenario(model, gpu, quant)
            reqs, _ = scaled(workload(name, base, quick), base, start)
            hub_cost = None
            for source in WEIGHT_SOURCES:
                s = replace(base, source_scheme=source)
                res = simulate(reqs, s, ["distillery", "clairvoyant"])
                d, c = res["distillery"], res["clairvoyant"]
                hub_cost = hub_cost or d["cost"]
                rows.append(
                    {
                        "model": model,
                        "cell": name,
                        "weightsFrom": source,
                        "startupSeconds": round(replica_model(s).startup_seconds, 1),
                        "distilleryCost": d["cost"],
                        "distilleryCostVsHub": round(d["cost"] / hub_cost, 3),
                        "distilleryAttainmentFeasible": d["sloAttainmentFeasible"],
                        "distilleryCostVsClairvoyant": round(d["cost"] / c["cost"], 3),
                        "clairvoyantCost": c["cost"],
                        "clairvoyantAttainmentFeasible": c["sloAttainmentFeasible"],
                        "flaps": d["flaps"],
                    }
                )
                r = rows[-1]
                print(
                    f"{model.split('/')[-1]:30} {name:26} {source:6} start "
                    f"{r['startupSeconds']:6.1f}s  distillery {d['cost']:8.2f} "
                    f"({r['distilleryCostVsHub']:.2f}x of hf) "
                    f"{100 * d['sloAttainmentFeasible']:6.2f}%  vs its clairvoyant "
                    f"{r['distilleryCostVsClairvoyant']:.2f}x  flaps {d['flaps']}",
                    flush=True,
                )
    (out_dir / "bench-startup.json").write_text(json.dumps({"rows": rows}, indent=1))
    (out_dir / "bench-startup.md").write_text(startup_markdown(rows))


def startup_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | cell | weights from | cold start | cost (x hf://) | attainment | flaps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model'].split('/')[-1].replace('DeepSeek-R1-Distill-', '')} | {r['cell']} | "
            f"{r['weightsFrom']} | {r['startupSeconds']:.0f} s | "
            f"{r['distilleryCost']:.2f} USD ({r['distilleryCostVsHub']:.2f}x) | "
            f"{100 * r['distilleryAttainmentFeasible']:.2f}% | {r['flaps']} |"
        )
    return "\n".join(lines) + "\n"


SCREEN_CACHE = ROOT / ".cache" / "bench" / "clairvoyant"


def reference_inputs_digest() -> str:
    """What a clairvoyant result depends on: every file of the package but the
    autoscaling policy (the fleet model, the catalog, the scenarios, the sizing), and
    this file (the cells)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    package = ROOT / "operator" / "distillery"
    for f in sorted(package.rglob("*")):
        rel = f.relative_to(package)
        if f.is_file() and "__pycache__" not in rel.parts and rel != Path("autoscale/policy.py"):
            digest.update(str(rel).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def screen(only: str | None, percentile: float) -> int:
    """distillery against clairvoyant on every cell (or those matching ``only``), one
    line each: cost and peak relative to clairvoyant, attainment over feasible
    requests, flaps, and clairvoyant's attainment."""
    cache = SCREEN_CACHE / reference_inputs_digest()
    cache.mkdir(parents=True, exist_ok=True)
    print("cell  cost x clairvoyant  attainment  peak x clairvoyant  flaps  clairvoyant attainment")
    for cell in cells(quick=False, only=only):
        key, s, reqs = cell.key, cell.scenario, cell.requests
        need = need_schedule(reqs, s)
        initial = initial_replicas(need, cell.start)
        cached = cache / (key.replace("/", "_") + ".json")
        if cached.exists():
            ref = json.loads(cached.read_text())
        else:
            ref = reference("clairvoyant", reqs, s, need, initial)
            ref.pop("replicas", None)
            cached.write_text(json.dumps(ref))
        declared = replace(s, slo_percentile=percentile)
        ours = run_policy(
            reqs, declared, make_policy("distillery", declared, need), initial=initial
        )
        print(
            f"{key}  {ours['cost'] / ref['cost']:.2f}  "
            f"{100 * ours['sloAttainmentFeasible']:.1f}%  "
            f"{ours['peakReplicas'] / max(1, ref['peakReplicas']):.2f}  {ours['flaps']}  "
            f"{100 * ref['sloAttainmentFeasible']:.1f}%",
            flush=True,
        )
    return 0


@dataclass(frozen=True)
class Cell:
    """One cell of the benchmark: a workload at its scaled rate, a model, a start."""

    workload: str
    model: str
    quantization: str
    scenario: Scenario
    requests: list[Request]
    rate: float
    start: str  # warm or cold

    @property
    def short(self) -> str:
        return self.model.split("/")[-1]

    @property
    def key(self) -> str:
        return cell_key(self.workload, self.model, self.start)


def cell_key(workload: str, model: str, start: str) -> str:
    """A cell's name as the benchmark prints it and ``--only``/``--cell`` match it."""
    return f"{workload}/{model.split('/')[-1]}/{start}"


def cells(quick: bool, only: str | None) -> Iterator[Cell]:
    """Every cell of the benchmark (those whose key contains ``only``), requests scaled."""
    workloads = [(t, start) for t, _, start in TRACE_SET] + [(n, 1.0) for n in STRESS_SET]
    for name, first_rate in workloads:
        for model, gpu, quant in MODELS[:1] if quick else MODELS:
            s = scenario(model, gpu, quant)
            starts = ["warm", "cold"] if name in COLD_AT_FULL_LOAD else ["warm"]
            if name == "full-load":
                starts = ["cold"]
            for start in starts:
                if only and only not in cell_key(name, model, start):
                    continue
                reqs, rate = scaled(workload(name, s, quick), s, first_rate)
                yield Cell(name, model, quant, s, reqs, rate, start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="first 2 h of each workload, 7B only")
    parser.add_argument("--only", help="run only cells whose name contains this")
    parser.add_argument(
        "--policies",
        type=lambda v: [p for p in v.split(",") if p],
        default=list(POLICY_NAMES),
        help="comma-separated policies to run (distillery and clairvoyant always run): "
        "'--policies distillery,clairvoyant' screens a policy change in minutes",
    )
    parser.add_argument(
        "--startup-sweep",
        action="store_true",
        help="only the weight-source table (Hub, object store, shared cache, node-local)",
    )
    parser.add_argument(
        "--screen",
        action="store_true",
        help="distillery against cached clairvoyant results only, a line a cell",
    )
    parser.add_argument(
        "--percentile",
        type=float,
        default=95.0,
        help="with --screen: the SLO percentile distillery's DMDs declare (default 95)",
    )
    parser.add_argument("--report", default=str(ROOT / "reports" / "bench-autoscaling.json"))
    args = parser.parse_args()
    if args.screen:
        return screen(args.only, args.percentile)
    out_dir = Path(args.report).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.startup_sweep:
        startup_sweep(out_dir, args.quick)
        return 0
    rows: list[dict[str, Any]] = []
    policies = list(dict.fromkeys(["distillery", "clairvoyant", *args.policies]))
    for cell in cells(args.quick, args.only):
        name, short, start_state = cell.workload, cell.short, cell.start
        s, reqs, rate = cell.scenario, cell.requests, cell.rate
        t0 = time.perf_counter()
        results = simulate(reqs, s, policies, scenario=start_state)
        wall = time.perf_counter() - t0
        report = {
            "trace": {"path": name, "rateScale": round(rate, 4), "requests": len(reqs)},
            "model": cell.model,
            "gpu": s.option.summary,
            "quantization": cell.quantization,
            "slo": {"ttftSeconds": SLO_TTFT, "percentile": 95},
            "scenario": start_state,
            "policies": results,
        }
        png = out_dir / f"bench-autoscaling-{name}-{short}-{start_state}.png"
        try:
            plot(report, [r.arrival for r in reqs], png, SLO_TTFT)
        except ImportError:
            png = Path()
        rows.append(
            {
                "cell": f"{name}/{short}",
                "scenario": start_state,
                "rateScale": round(rate, 4),
                "requests": len(reqs),
                "gpu": s.option.summary,
                "startupSeconds": round(replica_model(s).startup_seconds, 1),
                "wallSeconds": round(wall, 2),
                "verdict": verdict(results),
                "plot": str(png),
                "policies": {
                    n: {k: v for k, v in r.items() if k != "replicas"} for n, r in results.items()
                },
            }
        )
        print(f"\n== {cell.key}: {len(reqs)} requests, rate x{rate:.3g}, "
              f"{s.option.summary} ({cell.quantization}), {wall:.1f}s", flush=True)  # fmt: skip
        print(table(results), flush=True)
        Path(args.report).write_text(
            json.dumps({"sloTtftSeconds": SLO_TTFT, "cells": rows}, indent=1)
        )
    (out_dir / "bench-autoscaling.md").write_text(markdown(rows))
    print(f"\nwrote {args.report} and {out_dir / 'bench-autoscaling.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
