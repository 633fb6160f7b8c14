"""Reports of simulation runs: the JSON document, a text table, and the plots.

The JSON keys are an interface (docs/autoscaling.md): ``trace, model, gpu, slo,
scenario, policies{NAME: {gpuHours, cost, sloAttainment, sloAttainmentFeasible, ttftP50,
ttftP95, ttftP99, scaleEvents, flaps, peakReplicas, dropped, rejected, replicas}}``.
Costs in the table are relative to ``clairvoyant`` (the cheapest schedule that knows the
future and pays the same cold start); without it, to ``instant``.
matplotlib is imported only when a plot is asked for (an optional dependency).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REFERENCES = ("clairvoyant", "instant")


def reference_cost(policies: Mapping[str, Mapping[str, Any]]) -> tuple[str, float] | None:
    for name in REFERENCES:
        cost = policies.get(name, {}).get("cost")
        if cost:
            return name, float(cost)
    return None


def pareto(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names on the front of (cost, attainment): nobody is cheaper at >= attainment."""
    front = []
    for name, cost, att in points:
        if not any(
            (c <= cost and a >= att) and (c < cost or a > att) for n, c, a in points if n != name
        ):
            front.append(name)
    return front


def table(policies: Mapping[str, Mapping[str, Any]], currency: str = "USD") -> str:
    ref = reference_cost(policies)
    rows = [
        [
            "POLICY",
            "GPU-H",
            f"COST {currency}",
            f"VS {ref[0].upper()}" if ref else "VS REF",
            "SLO MET",
            "FEASIBLE",
            "TTFT P50",
            "P95",
            "P99",
            "SCALE EV",
            "FLAPS",
            "PEAK",
            "DROPPED",
        ]
    ]
    for name, r in policies.items():
        ratio = f"{r['cost'] / ref[1]:.2f}x" if ref else "-"

        def fmt(v: Any) -> str:
            return "-" if v is None else f"{v:.2f}"

        rows.append(
            [
                name,
                f"{r['gpuHours']:.2f}",
                f"{r['cost']:.2f}",
                ratio,
                f"{100 * r['sloAttainment']:.2f}%",
                f"{100 * r.get('sloAttainmentFeasible', r['sloAttainment']):.2f}%",
                fmt(r["ttftP50"]),
                fmt(r["ttftP95"]),
                fmt(r["ttftP99"]),
                str(r["scaleEvents"]),
                str(r.get("flaps", "-")),
                str(r.get("peakReplicas", "-")),
                str(r["dropped"]),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def plot(
    report: Mapping[str, Any], arrivals: Sequence[float], out: Path, slo: float | None = None
) -> None:
    """Load, then cost vs attainment (log cost; the Pareto front marked), then replicas
    over time as small multiples: one panel per policy, each on its own scale with the
    reference schedule dashed behind it, so one policy's spikes flatten no other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies: Mapping[str, Mapping[str, Any]] = report["policies"]
    names = list(policies)
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig = plt.figure(figsize=(12, 4.5 + 1.6 * rows))
    grid = fig.add_gridspec(2 + rows, cols, height_ratios=[1.3, 2.2] + [1.0] * rows)
    load = fig.add_subplot(grid[0, :])
    bucket = 60.0
    if arrivals:
        minutes = int(max(arrivals) // bucket) + 1
        counts = [0] * minutes
        for a in arrivals:
            counts[int(a // bucket)] += 1
        load.plot(
            [i * bucket / 3600 for i in range(minutes)], [c / bucket for c in counts], "k-", lw=0.8
        )
    load.set_ylabel("requests/s")
    trace = report.get("trace") or {}
    label = Path(str(trace.get("path", ""))).name if isinstance(trace, Mapping) else str(trace)
    load.set_title(
        f"{report.get('model')} on {report.get('gpu')}: {label} "
        f"({report.get('scenario', 'warm')} start)",
        fontsize=10,
    )
    scatter = fig.add_subplot(grid[1, :])
    ref = reference_cost(policies)
    points = [
        (
            n,
            policies[n]["cost"] / ref[1] if ref else policies[n]["cost"],
            100 * policies[n].get("sloAttainmentFeasible", policies[n]["sloAttainment"]),
        )
        for n in names
    ]
    front = set(pareto(points))
    for n, c, a in points:
        marker = "*" if n == "distillery" else ("s" if n in REFERENCES else "o")
        scatter.scatter([c], [a], marker=marker, s=80 if n == "distillery" else 35,
                        edgecolors="red" if n in front else "none")  # fmt: skip
        scatter.annotate(n, (c, a), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ordered = sorted((c, a) for n, c, a in points if n in front)
    if ordered:
        scatter.plot([c for c, _ in ordered], [a for _, a in ordered], "r--", lw=0.7)
    scatter.set_xlabel(f"cost x {ref[0]}" if ref else "cost")
    scatter.set_ylabel("% feasible requests within TTFT SLO" + (f" ({slo:g}s)" if slo else ""))
    if ref is not None:
        scatter.set_xscale("log")
    span = max((a for a in arrivals), default=0.0) / 3600
    reference = policies.get(ref[0] if ref else "", {}).get("replicas") or []
    for i, n in enumerate(names):
        ax = fig.add_subplot(grid[2 + i // cols, i % cols], sharex=load)
        if reference and n != (ref[0] if ref else None):
            ax.step([p[0] / 3600 for p in reference], [p[1] for p in reference], where="post",
                    lw=0.7, color="0.6", linestyle="--")  # fmt: skip
        series = policies[n].get("replicas") or []
        if series:
            ax.step([p[0] / 3600 for p in series], [p[1] for p in series], where="post", lw=0.9)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, max(span, 1e-3))
        ax.set_title(f"{n} (peak {policies[n].get('peakReplicas', '-')})", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
