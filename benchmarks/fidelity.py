"""Fidelity of the fleet model against real vLLM runs, by replay.

Every stage of ``benchmarks/data/vllm-h100-inference-perf.json`` (real vLLM on H100,
measured with inference-perf; see the file's ``source``) is rebuilt as a request list
(same constant rate, same length quantiles, the dataset's prompt re-sends as prefix-cache
hits) and replayed through one replica of the fleet model with the fitted step
constants. Per stage it prints the model's and the measured TTFT (mean), ITL (per output
token after the first), E2E (mean) and output throughput with the relative error; then
the mean absolute percentage error per metric over the fit set, the held-out set, and by
load level (light <= 8 req/s, medium, near saturation). Overload stages (more than 10%
client timeouts) are reported apart: the model does not abort requests a client gave up
on. Writes ``reports/bench-fidelity.json``.

Run: ``.venv/bin/python benchmarks/fidelity.py`` (about 15 s).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from distillery.simulate.calibration import mape
from distillery.sizing.steptime import FITTED
from reference_runs import METRICS, evaluate, load, load_level

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"ttft": 0.25, "itl": 0.15, "e2e": 0.15, "throughput": 0.15}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error"] for r in rows]
    return {
        "stages": len(rows),
        "mape": {m: round(mape(errors, m), 4) for m in METRICS} if rows else {},
    }


def main() -> int:
    doc = load()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for s in doc["stages"]:
        got, ref, err = evaluate(doc, s, FITTED)
        rows.append(
            {
                "stage": f"{s['model']} tp{s['tp']} {s['profile']} {s['rate']:g} req/s",
                "run": s["run"],
                "heldOut": s["heldOut"],
                "load": load_level(s),
                "model": got.as_dict(),
                "measured": ref.as_dict(),
                "error": {m: round(v, 4) for m, v in err.items()},
            }
        )
    print(f"{'STAGE':42} {'SET':8} {'LOAD':15}  TTFT ms (err)      ITL ms (err)     "
          f"E2E s (err)      THROUGHPUT tok/s (err)")  # fmt: skip
    for r in rows:
        g, m, e = r["model"], r["measured"], r["error"]
        print(
            f"{r['stage']:42} {'held' if r['heldOut'] else 'fit':8} {r['load']:15} "
            f"{1000 * g['ttft']:7.1f}/{1000 * m['ttft']:<7.1f}({100 * e['ttft']:+4.0f}%) "
            f"{1000 * g['itl']:5.1f}/{1000 * m['itl']:<5.1f}({100 * e['itl']:+4.0f}%) "
            f"{g['e2e']:6.2f}/{m['e2e']:<6.2f}({100 * e['e2e']:+4.0f}%) "
            f"{g['throughput']:6.0f}/{m['throughput']:<6.0f}({100 * e['throughput']:+4.0f}%)"
        )
    under_load = [r for r in rows if r["load"] != "overload"]
    groups = {
        "all (no overload)": under_load,
        "fit set": [r for r in under_load if not r["heldOut"]],
        "held out": [r for r in under_load if r["heldOut"]],
        "light": [r for r in under_load if r["load"] == "light"],
        "medium": [r for r in under_load if r["load"] == "medium"],
        "near-saturation": [r for r in under_load if r["load"] == "near-saturation"],
        "overload (not modelled: client aborts)": [r for r in rows if r["load"] == "overload"],
    }
    summary = {name: summarize(g) for name, g in groups.items()}
    print("\nMAPE           " + "  ".join(f"{m:>10}" for m in METRICS) + "   stages")
    for name, sm in summary.items():
        if sm["stages"]:
            cells = "  ".join(f"{100 * sm['mape'][m]:9.1f}%" for m in METRICS)
            print(f"{name:15.15} {cells}   {sm['stages']}")
    met = {m: summary["all (no overload)"]["mape"][m] <= TARGETS[m] for m in METRICS}
    print(f"targets (TTFT <= 25%, others <= 15%) over all non-overload stages: {met}")
    out = ROOT / "reports" / "bench-fidelity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "source": doc["source"],
                "constants": FITTED.as_dict(),
                "targets": TARGETS,
                "targetsMet": met,
                "summary": summary,
                "stages": rows,
                "wallSeconds": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
