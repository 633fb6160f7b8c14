"""Fit the step model's constants to real vLLM runs by replaying them.

The fit set is the "general" profile of ``benchmarks/data/vllm-h100-inference-perf.json``
(8 stages: Llama-2-7B TP1, Llama-2-70B TP4, CodeLlama-34B TP2, Mixtral-8x7B TP2 at two
rates each); every other run is held out and scored by ``benchmarks/fidelity.py``. The
loss is the mean absolute log error over TTFT, ITL, E2E and throughput; the search is
Nelder-Mead over the logarithms of the seven constants, started from the hand-derived
values in ``distillery.sizing.steptime``. Prints the constants to paste into
``steptime.FITTED`` and writes ``reports/fit-step-model.json``.

Run: ``.venv/bin/python benchmarks/fit_step_model.py [--iterations N]`` (about 3 s an
evaluation on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from distillery.sizing.steptime import FITTED, StepConstants
from reference_runs import METRICS, evaluate, load

ROOT = Path(__file__).resolve().parents[1]
ALL = [f.name for f in fields(StepConstants)]
# Bounds keep the physics physical: efficiencies in (0, 1], overheads non-negative.
UPPER = {"eta_weights": 1.0, "eta_kv": 1.0, "eta_compute": 1.0}


def constants(x: list[float], names: list[str], held: dict[str, float]) -> StepConstants:
    values = {n: min(math.exp(v), UPPER.get(n, math.inf)) for n, v in zip(names, x, strict=True)}
    return StepConstants(**values, **held)


def loss(
    doc: dict[str, Any],
    stages: list[dict[str, Any]],
    x: list[float],
    names: list[str],
    held: dict[str, float],
) -> float:
    c = constants(x, names, held)
    total = 0.0
    for s in stages:
        got, ref, _ = evaluate(doc, s, c)
        for m in METRICS:
            a, b = getattr(got, m), getattr(ref, m)
            total += abs(math.log(max(a, 1e-9) / b))
    return total / (len(stages) * len(METRICS))


def nelder_mead(
    f: Callable[[list[float]], float], x0: list[float], step: float, iterations: int
) -> tuple[list[float], float]:
    n = len(x0)
    simplex = [x0] + [[v + (step if i == j else 0.0) for j, v in enumerate(x0)] for i in range(n)]
    values = [f(p) for p in simplex]
    for it in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        print(f"  iteration {it}: loss {values[0]:.4f}", flush=True)
        centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflect = [c + (c - w) for c, w in zip(centroid, worst, strict=True)]
        fr = f(reflect)
        if fr < values[0]:
            expand = [c + 2 * (c - w) for c, w in zip(centroid, worst, strict=True)]
            fe = f(expand)
            simplex[-1], values[-1] = (expand, fe) if fe < fr else (reflect, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflect, fr
        else:
            contract = [c + 0.5 * (w - c) for c, w in zip(centroid, worst, strict=True)]
            fc = f(contract)
            if fc < values[-1]:
                simplex[-1], values[-1] = contract, fc
            else:
                best = simplex[0]
                simplex = [best] + [
                    [b + 0.5 * (p - b) for b, p in zip(best, q, strict=True)] for q in simplex[1:]
                ]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    i = min(range(n + 1), key=values.__getitem__)
    return simplex[i], values[i]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument(
        "--hold", action="append", default=[], metavar="NAME=VALUE",
        help="keep a constant fixed (default: eta_compute=0.60)",
    )  # fmt: skip
    args = parser.parse_args()
    held = {"eta_compute": 0.60}
    for item in args.hold:
        key, _, value = item.partition("=")
        held[key] = float(value)
    names = [n for n in ALL if n not in held]
    doc = load()
    fit_set = [s for s in doc["stages"] if not s["heldOut"]]
    x0 = [math.log(getattr(FITTED, n)) for n in names]
    t0 = time.perf_counter()
    start = loss(doc, fit_set, x0, names, held)
    print(f"start: loss {start:.4f} ({time.perf_counter() - t0:.1f}s an evaluation)")
    best, value = nelder_mead(
        lambda x: loss(doc, fit_set, x, names, held), x0, 0.15, args.iterations
    )
    c = constants(best, names, held)
    print(f"fitted: loss {value:.4f} (start {start:.4f})")
    for n in ALL:
        print(f"    {n}: float = {getattr(c, n):.4g}{'  (held)' if n in held else ''}")
    out = ROOT / "reports" / "fit-step-model.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "loss": value,
                "startLoss": start,
                "constants": c.as_dict(),
                "fitStages": [f"{s['model']}/{s['profile']}/{s['stage']}" for s in fit_set],
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
