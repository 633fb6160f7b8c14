"""Reports of simulation runs: the JSON document, a text table, and the plot.

The JSON keys are an interface (DESIGN §8): ``trace, model, gpu, slo, policies{NAME:
{gpuHours, cost, sloAttainment, ttftP50, ttftP95, ttftP99, scaleEvents, dropped, ...}}``.
matplotlib is imported only when a plot is asked for (an optional dependency).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def table(policies: Mapping[str, Mapping[str, Any]], currency: str = "USD") -> str:
    oracle = policies.get("oracle", {}).get("cost")
    rows = [
        [
            "POLICY",
            "GPU-H",
            f"COST {currency}",
            "VS ORACLE",
            "SLO MET",
            "TTFT P50",
            "P95",
            "P99",
            "SCALE EV",
            "DROPPED",
        ]
    ]
    for name, r in policies.items():
        ratio = f"{r['cost'] / oracle:.2f}x" if oracle else "-"

        def fmt(v: Any) -> str:
            return "-" if v is None else f"{v:.2f}"

        rows.append(
            [
                name,
                f"{r['gpuHours']:.2f}",
                f"{r['cost']:.2f}",
                ratio,
                f"{100 * r['sloAttainment']:.2f}%",
                fmt(r["ttftP50"]),
                fmt(r["ttftP95"]),
                fmt(r["ttftP99"]),
                str(r["scaleEvents"]),
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies: Mapping[str, Mapping[str, Any]] = report["policies"]
    fig = plt.figure(figsize=(11, 9))
    top = fig.add_subplot(311)
    axes = [top, fig.add_subplot(312, sharex=top), fig.add_subplot(313)]
    bucket = 60.0
    if arrivals:
        n = int(max(arrivals) // bucket) + 1
        counts = [0] * n
        for a in arrivals:
            counts[int(a // bucket)] += 1
        axes[0].plot(
            [i * bucket / 3600 for i in range(n)],
            [c / bucket for c in counts],
            color="black",
            linewidth=0.8,
        )
    axes[0].set_ylabel("requests/s")
    trace = report.get("trace") or {}
    name = Path(str(trace.get("path", ""))).name if isinstance(trace, Mapping) else str(trace)
    axes[0].set_title(f"{report.get('model')} on {report.get('gpu')}: {name}", fontsize=10)
    for name, r in policies.items():
        series = r.get("replicas") or []
        if series:
            axes[1].step(
                [p[0] / 3600 for p in series],
                [p[1] for p in series],
                where="post",
                label=name,
                linewidth=1.2 if name == "distillery" else 0.8,
            )
    axes[1].set_ylabel("replicas")
    axes[1].legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    names = list(policies)
    axes[2].bar(range(len(names)), [100 * policies[n]["sloAttainment"] for n in names])
    axes[2].set_xticks(range(len(names)))
    axes[2].set_xticklabels(names, fontsize=7)
    axes[2].set_ylabel("% requests meeting TTFT SLO" + (f" ({slo:g}s)" if slo else ""))
    axes[1].set_xlabel("hours")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
