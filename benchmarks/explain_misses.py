"""Where distillery misses the SLO on one benchmark cell, minute by minute.

For each minute of the cell's requests: what the clairvoyant reference's need was, what
distillery had asked for and had ready, how many requests arrived and how many missed
the TTFT SLO. The causes in docs/autoscaling.md ("Where it misses, and why") were read
off this table:

    .venv/bin/python benchmarks/explain_misses.py azure-2023-code --model 0 --start warm
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from autoscaling import COLD_AT_FULL_LOAD, MODELS, STRESS_SET, TRACE_SET, scaled, scenario, workload
from distillery.simulate.engine import (
    distillery_policy,
    initial_replicas,
    need_schedule,
    replica_model,
    run_policy,
)
from distillery.simulate.fleet import Fleet


def main() -> int:
    cells = [t for t, _, _ in TRACE_SET] + STRESS_SET
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell", choices=cells)
    parser.add_argument("--model", type=int, default=0, help="0: 7B, 1: 32B, 2: 70B")
    parser.add_argument("--start", choices=["warm", "cold"], default="warm")
    parser.add_argument("--full", action="store_true", help="the whole trace, not 2 h")
    parser.add_argument("--all", action="store_true", help="every minute, not only misses")
    args = parser.parse_args()
    if args.start == "cold" and args.cell not in COLD_AT_FULL_LOAD:
        parser.error(f"{args.cell} is benchmarked warm only")
    model, gpu, quant = MODELS[args.model]
    s = scenario(model, gpu, quant)
    rate0 = next((r for name, _, r in TRACE_SET if name == args.cell), 1.0)
    reqs, rate = scaled(workload(args.cell, s, not args.full), s, rate0)
    need = need_schedule(reqs, s)
    arrived: dict[int, int] = defaultdict(int)
    missed: dict[int, int] = defaultdict(int)

    def count(fleet: Fleet) -> None:
        for o in fleet.outcomes:
            minute = int(o.request.arrival // 60)
            arrived[minute] += 1
            if o.dropped or o.ttft is None or o.ttft > s.slo_ttft:
                missed[minute] += 1

    initial = initial_replicas(need, args.start)
    result = run_policy(reqs, s, distillery_policy(s), initial=initial, finished=count)
    replicas = {int(t // 60): (desired, ready) for t, desired, ready in result["replicas"]}
    needs = {int(t // 60): n for t, n in need}
    print(
        f"{args.cell} {model.split('/')[-1]} {args.start}: {len(reqs)} requests at rate "
        f"x{rate:.3g}, cold start {replica_model(s).startup_seconds:.0f}s; attainment "
        f"(feasible) {100 * result['sloAttainmentFeasible']:.2f}%, {result['gpuHours']} GPU-h"
    )
    print("minute  need  desired  ready  requests  missed")
    for minute in sorted(arrived):
        if not args.all and not missed[minute]:
            continue
        desired, ready = replicas.get(minute, (0, 0))
        print(
            f"{minute:6d}  {needs.get(minute, 0):4d}  {desired:7.0f}  {ready:5.0f}  "
            f"{arrived[minute]:8d}  {missed[minute]:6d}"
        )
    total = sum(missed.values())
    print(f"missed {total} of {sum(arrived.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
