"""Print what distillery's autoscaling policy did on a trace, decision by decision.

The worked example in docs/autoscaling.md is this script's output:
``.venv/bin/python benchmarks/explain_policy.py`` (2 h of the ServeGen DeepSeek-R1 day,
7B on one L40S, rate x0.05, TTFT SLO 2 s); ``--stress step --start-hour 0 --hours 1.2``
replays a generated stress scenario as the benchmark does.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from autoscaling import COLD_AT_FULL_LOAD, STRESS_SET, cells, scaled, workload
from distillery.api.types import DistilledModelDeploymentSpec
from distillery.catalog import load_catalog
from distillery.simulate.engine import (
    Scenario,
    distillery_policy,
    initial_replicas,
    need_schedule,
    run_policy,
)
from distillery.simulate.policies import Distillery
from distillery.simulate.signals import Signals
from distillery.simulate.workload import load
from distillery.sizing import plan

TRACES = Path(__file__).resolve().parent / "traces"


class Explained(Distillery):
    log: list[str]
    holding: bool = False
    # Minutes in which every decision is printed with all its inputs, not only changes.
    every: tuple[float, float] | None = None

    def desired(self, sig: Signals, current: int) -> int:
        want = super().desired(sig, current)
        # A change, or the first decision of a stretch the payback rule holds (it judged
        # a scale-down and the count stays).
        held = want == current and "quietStretchesJudged" in self.last_inputs
        if self.every is not None and self.every[0] <= sig.time / 60 <= self.every[1]:
            inputs = " ".join(f"{k}={v:g}" for k, v in self.last_inputs.items())
            self.log.append(
                f"t={sig.time / 60:6.2f} min {current:2d} -> {want:2d} {self.last_reason} "
                f"ready={sig.gauges.ready} | {inputs}"
            )
        elif want != current or (held and not self.holding):
            i = self.last_inputs
            ttft = "-" if "ttftPercentile" not in i else f"{i['ttftPercentile']:.2f}s"
            self.log.append(
                f"t={sig.time / 60:6.1f} min {current:2d} -> {want:2d} {self.last_reason:<30} "
                f"run={i['running']:4.0f} wait={i['waiting']:4.0f} "
                f"demand={i['demandReplicas']:5.2f} headroom={i['headroomReplicas']:5.2f} "
                f"backlog={i['backlogReplicas']:4.2f} util={i['utilizationScale']:.2f} "
                f"p95={ttft:>6} guard={i.get('ttftGuardReplicas', 0):.0f} "
                f"prefill={i.get('prefillUtilization', 1):.2f} "
                f"ready={sig.gauges.ready}"
            )
        self.holding = held
        return want


def explain_cell(
    key: str, percentile: float = 95.0, every: tuple[float, float] | None = None
) -> int:
    """One cell of ``benchmarks/autoscaling.py``: its model, placement, rate and start."""
    cell = next((c for c in cells(quick=False, only=key) if c.key == key), None)
    if cell is None:
        raise SystemExit(f"no benchmark cell {key!r}: WORKLOAD/MODEL/warm|cold, as it prints")
    s = replace(cell.scenario, slo_percentile=percentile)
    reqs, rate, start = cell.requests, cell.rate, cell.start
    base = distillery_policy(s)
    policy = Explained(capacity=base.capacity, limits=base.limits)
    policy.log, policy.every = [], every
    result = run_policy(reqs, s, policy, initial=initial_replicas(need_schedule(reqs, s), start))
    print(f"{len(reqs)} requests at rate x{rate:.3g}, {s.option.summary}, {start} start")
    print("\n".join(policy.log))
    print(
        f"GPU-hours {result['gpuHours']}, SLO attainment (feasible) "
        f"{100 * result['sloAttainmentFeasible']:.2f}%, peak {result['peakReplicas']}, "
        f"scale events {result['scaleEvents']}, flaps {result['flaps']}"
    )
    return 0


def _minutes(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        window = float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want FROM-TO in minutes, e.g. 10-12") from None
    if window[0] > window[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: FROM is after TO")
    return window


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--start-hour", type=float, default=8.0)
    parser.add_argument(
        "--stress",
        choices=STRESS_SET,
        help="a generated stress scenario instead, scaled and started as the benchmark "
        "runs it (the window is then from its start)",
    )
    parser.add_argument(
        "--cell",
        help="a benchmark cell instead, as the benchmark runs it, e.g. "
        "mooncake-synthetic/DeepSeek-R1-Distill-Qwen-32B/warm (every request of it)",
    )
    parser.add_argument(
        "--percentile",
        type=float,
        default=95.0,
        help="with --cell: the SLO percentile the DMD declares (the benchmark's is 95)",
    )
    parser.add_argument(
        "--minutes",
        type=_minutes,
        help="FROM-TO: every decision in these minutes, with all its inputs (e.g. 10-12)",
    )
    args = parser.parse_args()
    if args.cell:
        return explain_cell(args.cell, args.percentile, args.minutes)
    catalog = load_catalog()
    spec = DistilledModelDeploymentSpec.model_validate(
        {
            "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "quantization": "none"},
            "placement": {"gpuTypes": ["nvidia-l40s"]},
        }
    )
    p = plan(spec, catalog)
    s = Scenario(
        model=p.model,
        option=p.chosen,
        max_concurrency=64,
        typical_tokens=p.requirements.typical_tokens,
        slo_ttft=2.0,
        max_replicas=50,
    )
    lo, hi = args.start_hour * 3600, (args.start_hour + args.hours) * 3600
    if args.stress:
        make = workload(args.stress, s, quick=False)
        reqs, _ = scaled(make, s, 1.0)
    else:
        reqs = load(TRACES / "servegen-deepseek-r1", "servegen", rate_scale=0.05, seed=42)
    window = [r for r in reqs if lo <= r.arrival < hi]
    window = [type(r)(r.arrival - lo, r.prompt_tokens, r.output_tokens) for r in window]
    base = distillery_policy(s)
    policy = Explained(capacity=base.capacity, limits=base.limits)
    policy.log, policy.every = [], args.minutes
    # Same start as the benchmark: what the first minute needs, ready (warm), or one
    # replica under full load (cold).
    start = "cold" if args.stress in COLD_AT_FULL_LOAD else "warm"
    result = run_policy(
        window, s, policy, initial=initial_replicas(need_schedule(window, s), start)
    )
    cap = base.capacity
    print(
        f"{len(window)} requests, {p.chosen.summary}; per replica: decode "
        f"{cap.decode_tokens_per_second:.0f} tok/s at 64 slots, prefill "
        f"{cap.prefill_tokens_per_second:.0f} tok/s, utilization target {cap.utilization:.2f} "
        f"(balanced), cold start {cap.startup_seconds:.0f}s"
    )
    for line in policy.log:
        print(line)
    print(
        f"GPU-hours {result['gpuHours']}, SLO attainment {100 * result['sloAttainment']:.2f}%,"
        f" TTFT p95 {result['ttftP95']}s, scale events {result['scaleEvents']}, "
        f"flaps {result['flaps']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
