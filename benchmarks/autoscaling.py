"""Autoscaling benchmark: every trace in shared/traces x a 7B, a 32B and a 70B model on
fitting GPUs, every policy, scored by the simulator.

For each cell the request rate is scaled until the oracle's peak needs at least six
replicas (so scaling decisions matter), then all policies replay the same requests.
Writes ``reports/bench-autoscaling.json`` and one PNG per cell, prints the table, and
records the simulator's speed: the 57-minute Azure trace with every policy (target
< 30 s) and the full ServeGen day (target < 5 min) on this machine.

The policy's parameters come from the model, the GPU and the SLO only; nothing here is
tuned per trace.

Run: ``make bench`` or ``.venv/bin/python benchmarks/autoscaling.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "benchmarks" / "traces"

from distillery.api.types import DistilledModelDeploymentSpec  # noqa: E402
from distillery.catalog import load_catalog  # noqa: E402
from distillery.simulate.engine import Scenario, oracle_schedule, simulate  # noqa: E402
from distillery.simulate.report import plot, table  # noqa: E402
from distillery.simulate.workload import Request, load  # noqa: E402
from distillery.sizing import plan  # noqa: E402

MODELS = [
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-l40s", "none"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "nvidia-h100-80gb", "fp8"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "nvidia-h100-80gb", "fp8"),
]
TRACE_SET = [
    ("azure-2023-code", TRACES / "azure-2023-code.csv", "azure"),
    ("servegen-deepseek-r1-day", TRACES / "servegen-deepseek-r1", "servegen"),
]
MIN_PEAK_REPLICAS = 6
SLO_TTFT = 2.0


def scenario(model: str, gpu: str, quant: str) -> Scenario:
    catalog = load_catalog()
    spec = DistilledModelDeploymentSpec.model_validate(
        {
            "model": {"name": model, "quantization": quant},
            "serving": {"maxModelLen": 32768, "maxConcurrency": 64},
            "placement": {"gpuTypes": [gpu]},
        }
    )
    p = plan(spec, catalog)
    return Scenario(
        model=p.model,
        option=p.chosen,
        max_concurrency=64,
        typical_tokens=p.requirements.typical_tokens,
        slo_ttft=SLO_TTFT,
        max_replicas=500,
    )


def scaled(path: Path, fmt: str, s: Scenario, quick: bool) -> tuple[list[Request], float]:
    """Scale the rate so the oracle's peak lands between 6 and 12 replicas: enough that
    scaling matters, no more than needed (a day at full ServeGen rate is 1.4 M requests)."""
    rate = 1.0 if fmt == "azure" else 0.05
    reqs: list[Request] = []
    for _ in range(6):
        reqs = load(path, fmt, rate_scale=rate, seed=42)
        if quick:
            reqs = [r for r in reqs if r.arrival < 4 * 3600]
        peak = max(n for _, n in oracle_schedule(reqs, s))
        if MIN_PEAK_REPLICAS <= peak <= 2 * MIN_PEAK_REPLICAS:
            break
        rate *= 1.5 * MIN_PEAK_REPLICAS / max(peak, 1)
    return reqs, rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="first 4 h of each trace")
    parser.add_argument("-o", "--output", default=str(ROOT / "reports" / "bench-autoscaling.json"))
    args = parser.parse_args()
    out_dir = Path(args.output).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    speed: dict[str, float] = {}
    for trace_name, path, fmt in TRACE_SET:
        for model, gpu, quant in MODELS:
            s = scenario(model, gpu, quant)
            reqs, rate = scaled(path, fmt, s, args.quick)
            t0 = time.perf_counter()
            results = simulate(reqs, s)
            wall = time.perf_counter() - t0
            key = f"{trace_name}/{model.split('/')[-1]}"
            if trace_name.startswith("azure"):
                speed[f"azure57min:{model.split('/')[-1]}"] = round(wall, 2)
            elif not args.quick:
                speed[f"servegenDay:{model.split('/')[-1]}"] = round(wall, 2)
            report = {
                "trace": {
                    "path": str(path),
                    "format": fmt,
                    "rateScale": round(rate, 3),
                    "requests": len(reqs),
                },
                "model": model,
                "gpu": s.option.summary,
                "quantization": quant,
                "slo": {"ttftSeconds": SLO_TTFT, "percentile": 95},
                "wallSeconds": wall,
                "policies": results,
            }
            png = out_dir / f"bench-autoscaling-{trace_name}-{model.split('/')[-1]}.png"
            try:
                plot(report, [r.arrival for r in reqs], png, SLO_TTFT)
            except ImportError:
                png = Path()
            ours, oracle = results["distillery"], results["oracle"]
            dominated = [
                n
                for n, r in results.items()
                if n not in ("distillery", "oracle")
                and r["cost"] <= ours["cost"]
                and r["sloAttainment"] >= ours["sloAttainment"]
            ]
            cells.append(
                {
                    "cell": key,
                    "rateScale": round(rate, 3),
                    "requests": len(reqs),
                    "gpu": s.option.summary,
                    "wallSeconds": round(wall, 2),
                    "distilleryCostVsOracle": round(ours["cost"] / oracle["cost"], 3),
                    "distilleryAttainment": ours["sloAttainment"],
                    "anchorsNotBeaten": dominated,
                    "plot": str(png),
                    "policies": {
                        n: {k: v for k, v in r.items() if k != "replicas"}
                        for n, r in results.items()
                    },
                }
            )
            print(
                f"\n== {key}: {len(reqs)} requests, rate x{rate:.2f}, {s.option.summary} "
                f"({quant}), {wall:.1f}s",
                flush=True,
            )
            print(table(results), flush=True)
    doc = {
        "sloTtftSeconds": SLO_TTFT,
        "minPeakReplicas": MIN_PEAK_REPLICAS,
        "speedSeconds": speed,
        "speedTargets": {"azure57min": 30, "servegenDay": 300},
        "cells": cells,
    }
    Path(args.output).write_text(json.dumps(doc, indent=1))
    print(f"\nspeed: {speed}\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
