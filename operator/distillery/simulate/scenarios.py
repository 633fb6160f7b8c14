"""Generated stress workloads for the autoscaling benchmark (pure, seeded).

Recorded traces show what happened once; these show what an autoscaler must survive
anywhere. Each is a non-homogeneous Poisson process (thinning) at a base rate ``rate``
(requests per second) with reasoning-service lengths, so the benchmark can scale any of
them to the fleet size it wants:

- ``step``: 20 min at the base rate, 40 min at 10x, 20 min back at the base;
- ``bursts``: the base rate with 10x bursts that last a third of a cold start, every
  10 min: gone before a replica started for them can serve;
- ``diurnal``: a 4-hour sine between the base rate and 8x;
- ``drift``: a slow linear rise from the base rate to 4x over 3 hours;
- ``long-prompt-tail``: the base rate with Pareto prompt lengths (alpha 1.1, from 2k
  tokens up to the context limit): prefill-bound, some prompts infeasible alone;
- ``full-load``: a constant 10x rate from the first second (for the cold start).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from distillery.simulate.workload import Request

STRESS_SCENARIOS = ("step", "bursts", "diurnal", "drift", "long-prompt-tail", "full-load")


def _lengths(rng: random.Random, max_model_len: int) -> tuple[int, int]:
    """Reasoning-service lengths: prompts of about 800 tokens, long outputs (lognormal)."""
    output = min(8192, max(16, int(rng.lognormvariate(math.log(600), 1.0))))
    prompt = min(16384, max(16, int(rng.lognormvariate(math.log(800), 1.0))))
    return min(prompt, max_model_len - output), output


def _poisson(
    rate: Callable[[float], float],
    peak: float,
    duration: float,
    rng: random.Random,
    lengths: Callable[[random.Random], tuple[int, int]],
) -> list[Request]:
    out: list[Request] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return out
        if rng.random() * peak <= rate(t):
            p, o = lengths(rng)
            out.append(Request(t, max(1, p), max(1, o)))


def generate(
    name: str,
    rate: float,
    *,
    seed: int = 0,
    startup_seconds: float = 150.0,
    max_model_len: int = 32768,
) -> list[Request]:
    """The named stress workload at base ``rate`` requests per second."""
    rng = random.Random(f"{name}:{seed}")

    def normal(r: random.Random) -> tuple[int, int]:
        return _lengths(r, max_model_len)

    if name == "step":

        def step(t: float) -> float:
            return rate * (10.0 if 1200 <= t < 3600 else 1.0)

        return _poisson(step, 10 * rate, 4800, rng, normal)
    if name == "bursts":
        width = max(10.0, startup_seconds / 3)

        def bursts(t: float) -> float:
            return rate * (10.0 if (t % 600) < width else 1.0)

        return _poisson(bursts, 10 * rate, 3 * 3600, rng, normal)
    if name == "diurnal":

        def diurnal(t: float) -> float:
            return rate * (1 + 3.5 * (1 - math.cos(2 * math.pi * t / 14400)))

        return _poisson(diurnal, 8 * rate, 14400, rng, normal)
    if name == "drift":
        return _poisson(lambda t: rate * (1 + 3 * t / 10800), 4 * rate, 10800, rng, normal)
    if name == "long-prompt-tail":

        def tail(r: random.Random) -> tuple[int, int]:
            output = min(2048, max(16, int(r.lognormvariate(math.log(300), 0.8))))
            prompt = int(2000 * r.paretovariate(1.1))
            return min(prompt, max_model_len - output), output

        return _poisson(lambda t: rate, rate, 2 * 3600, rng, tail)
    if name == "full-load":
        return _poisson(lambda t: 10 * rate, 10 * rate, 3600, rng, normal)
    raise ValueError(f"unknown stress scenario {name!r}: one of {', '.join(STRESS_SCENARIOS)}")
