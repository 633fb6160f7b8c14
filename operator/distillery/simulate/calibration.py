"""Replaying measured engine runs through the fleet model, and scoring the match (pure).

A measured run is a stage of constant-rate load against one replica, summarised the way
load generators report it: quantiles of prompt and output lengths, the TTFT and
end-to-end latency it saw, and its throughput. :func:`stage_requests` rebuilds a request
list with the same arrival process and length distributions (seeded), :func:`replay`
runs it through one replica of the fleet model, and :func:`compare` gives the relative
error per metric. The fit (``benchmarks/fit_step_model.py``) and the fidelity report
(``benchmarks/fidelity.py``) are both built on these three functions.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distillery.simulate.fleet import Fleet, ReplicaModel
from distillery.simulate.policies import _percentile
from distillery.simulate.workload import Request

# Quantile labels as load generators write them, and the probability each stands for.
_QUANTILES = {"min": 0.0, "p1": 0.01, "p5": 0.05, "p10": 0.10, "p25": 0.25, "p50": 0.50,
              "p75": 0.75, "p90": 0.90, "p99": 0.99, "max": 1.0}  # fmt: skip
METRICS = ("ttft", "itl", "e2e", "throughput")


def _inverse_cdf(table: Mapping[str, float]) -> tuple[list[float], list[float]]:
    pairs = sorted((_QUANTILES[k], float(v)) for k, v in table.items() if k in _QUANTILES)
    return [p for p, _ in pairs], [v for _, v in pairs]


def _sample(probs: list[float], values: list[float], u: float) -> float:
    i = bisect.bisect_left(probs, u)
    if i <= 0:
        return values[0]
    if i >= len(probs):
        return values[-1]
    p0, p1 = probs[i - 1], probs[i]
    v0, v1 = values[i - 1], values[i]
    return v0 + (v1 - v0) * ((u - p0) / (p1 - p0) if p1 > p0 else 0.0)


# A prefix cache matches whole blocks: at least the last partial block is computed.
CACHE_BLOCK_TOKENS = 16


def stage_requests(
    stage: Mapping[str, Any], seed: int = 0, distinct_prompts: int | None = None
) -> list[Request]:
    """Requests at a constant rate for the stage's duration, lengths drawn from its
    quantile tables (linear between the published quantiles).

    With ``distinct_prompts``, the load re-sends that many prompts (as shared-prefix
    benchmark datasets do): the first send of each is computed, every later one finds
    all but its last partial block in the engine's prefix cache."""
    rng = random.Random(seed)
    rate = float(stage["rate"])
    n = round(rate * float(stage["durationSeconds"]))
    pp, pv = _inverse_cdf(stage["prompt"])
    op, ov = _inverse_cdf(stage["output"])
    out = []
    for i in range(n):
        prompt = max(1, round(_sample(pp, pv, rng.random())))
        cached = 0
        if distinct_prompts is not None and i >= distinct_prompts:
            tail = prompt % CACHE_BLOCK_TOKENS or CACHE_BLOCK_TOKENS
            cached = max(0, prompt - tail)
        out.append(Request(i / rate, prompt, max(1, round(_sample(op, ov, rng.random()))), cached))
    return out


@dataclass(frozen=True)
class Measured:
    ttft: float  # mean, s
    itl: float  # per output token after the first, token-weighted, s
    e2e: float  # mean, s
    throughput: float  # output tokens per second, first send to last completion
    ttft_p50: float
    ttft_p90: float
    completed: int

    def as_dict(self) -> dict[str, float]:
        return {
            "ttft": round(self.ttft, 5),
            "ttftP50": round(self.ttft_p50, 5),
            "ttftP90": round(self.ttft_p90, 5),
            "itl": round(self.itl, 6),
            "e2e": round(self.e2e, 4),
            "throughput": round(self.throughput, 1),
            "completed": self.completed,
        }


def replay(
    model: ReplicaModel, requests: Sequence[Request], duration: float, timeout: float = 300.0
) -> Measured:
    """One replica serves ``requests``; the stage is measured as a client would: requests
    that take longer than ``timeout`` count as failures, not as latencies."""
    fleet = Fleet(model, 1)
    dt, t, i = 0.5, 0.0, 0
    end = duration + timeout
    while t < end:
        j = i
        while j < len(requests) and requests[j].arrival < t + dt:
            j += 1
        fleet.step(t, dt, requests[i:j])
        i = j
        t += dt
        if i >= len(requests) and not any(r.outstanding for r in fleet.replicas):
            break
    done = [
        o
        for o in fleet.outcomes
        if o.finish is not None
        and o.first_token is not None
        and o.finish - o.request.arrival <= timeout
    ]
    if not done:
        return Measured(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    ttfts = [o.first_token - o.request.arrival for o in done if o.first_token is not None]
    e2es = [o.finish - o.request.arrival for o in done if o.finish is not None]
    outputs = [o.request.output_tokens for o in done]
    mean_out = sum(outputs) / len(outputs)
    ttft, e2e = sum(ttfts) / len(ttfts), sum(e2es) / len(e2es)
    return Measured(
        ttft=ttft,
        itl=(e2e - ttft) / max(1.0, mean_out - 1),
        e2e=e2e,
        throughput=sum(outputs)
        / max(
            1e-9, max(e2e_end for e2e_end in (o.finish or 0.0 for o in done)) - requests[0].arrival
        ),
        ttft_p50=_percentile(ttfts, 50),
        ttft_p90=_percentile(ttfts, 90),
        completed=len(done),
    )


def reference(stage: Mapping[str, Any]) -> Measured:
    """The measured figures of a stage, in the same terms as :func:`replay`'s."""
    ttft, e2e = float(stage["ttft"]["mean"]), float(stage["e2e"]["mean"])
    out = float(stage["output"]["mean"])
    return Measured(
        ttft=ttft,
        itl=(e2e - ttft) / max(1.0, out - 1),
        e2e=e2e,
        throughput=float(stage["outputTokensPerSecond"]),
        ttft_p50=float(stage["ttft"]["p50"]),
        ttft_p90=float(stage["ttft"]["p90"]),
        completed=int(stage["count"]),
    )


def compare(model: Measured, measured: Measured) -> dict[str, float]:
    """Relative error of the model per metric: (model - measured) / measured."""
    return {m: getattr(model, m) / getattr(measured, m) - 1.0 for m in METRICS}


def mape(errors: Sequence[Mapping[str, float]], metric: str) -> float:
    values = [abs(e[metric]) for e in errors]
    return sum(values) / len(values) if values else 0.0
