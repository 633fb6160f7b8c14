"""The fleet as Prometheus shows it to an autoscaler (pure).

Policies never read the fleet model's live state. They read what a Prometheus server
scraping every pod would return:

- **gauges** (running, waiting, KV-cache use per ready pod) as of the last scrape, which
  is up to one scrape interval old;
- **counters** through ``rate()``: the increase between the first and the last sample
  inside the window over the time between them, and nothing until the window holds two
  scrapes (a rate over one sample does not exist; a first decision never divides by one
  second). The counters are fleet-wide and only grow, like the sum of per-pod series: a
  replica removed by a scale-down takes nothing away from the rate.
- **TTFT percentiles** through ``histogram_quantile`` over the increase of each bucket
  of vLLM's own histogram within the window. Requests enter the histogram when their
  first token is produced, never earlier.

Prometheus extrapolates ``rate()`` to the window's edges; this view does not (the
difference is a few percent on a 1-minute window of 15-second scrapes and the same for
every policy).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from distillery.autoscale.histogram import histogram_quantile
from distillery.simulate.fleet import VLLM_TTFT_BUCKETS, Fleet, Snapshot

SCRAPE_INTERVAL = 15.0  # Prometheus' and the PodMonitor's default
RATE_WINDOW = 60.0  # rate(...[1m]), as the operator queries


@dataclass(frozen=True)
class Scrape:
    time: float
    gauges: Snapshot
    prompt_tokens: float
    computed_prompt_tokens: float
    generation_tokens: float
    finished: int
    ttft_cumulative: tuple[int, ...]  # cumulative count per VLLM_TTFT_BUCKETS boundary
    ttft_sum: float = 0.0


@dataclass(frozen=True)
class Signals:
    """What a policy sees at one decision: the last scrape and windowed rates."""

    time: float
    scraped_at: float
    gauges: Snapshot
    prompt_tokens_per_second: float | None
    computed_prompt_tokens_per_second: float | None
    generation_tokens_per_second: float | None
    requests_per_second: float | None
    ttft_buckets: dict[float, float] | None  # increase per cumulative bucket in the window
    ttft_sum: float | None = None  # the histogram's _sum, in the units of ttft_buckets

    def ttft_quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.ttft_buckets) if self.ttft_buckets else None

    @property
    def running(self) -> int:
        return sum(self.gauges.running)

    @property
    def waiting(self) -> int:
        """Waiting in the engines' queues plus requests no ready replica took yet."""
        return sum(self.gauges.waiting) + self.gauges.pending

    @property
    def kv_mean(self) -> float | None:
        kv = self.gauges.kv_usage
        return sum(kv) / len(kv) if kv else None


class PrometheusView:
    """Scrapes a fleet on a fixed interval and answers the queries policies make."""

    def __init__(
        self,
        interval: float = SCRAPE_INTERVAL,
        window: float = RATE_WINDOW,
        retention: float = 900.0,
    ):
        self.interval = interval
        self.window = window
        self.retention = retention
        self.scrapes: deque[Scrape] = deque()
        self.next_scrape = 0.0

    def observe(self, t: float, fleet: Fleet) -> None:
        """Scrape if one is due at ``t``."""
        if t + 1e-9 < self.next_scrape:
            return
        c = fleet.counters
        cumulative: list[int] = []
        acc = 0
        for n in c.ttft_buckets:
            acc += n
            cumulative.append(acc)
        self.scrapes.append(
            Scrape(
                time=t,
                gauges=fleet.snapshot(t),
                prompt_tokens=c.prompt_tokens,
                computed_prompt_tokens=c.computed_prompt_tokens,
                generation_tokens=c.generation_tokens,
                finished=c.finished,
                ttft_cumulative=tuple(cumulative),
                ttft_sum=c.ttft_sum,
            )
        )
        while self.scrapes and self.scrapes[0].time < t - self.retention:
            self.scrapes.popleft()
        self.next_scrape = t + self.interval

    def _window(self, t: float) -> tuple[Scrape, Scrape] | None:
        inside = [s for s in self.scrapes if t - self.window < s.time <= t + 1e-9]
        if len(inside) < 2:
            return None
        return inside[0], inside[-1]

    def signals(self, t: float) -> Signals | None:
        """The policy's view at ``t``; None before the first scrape."""
        if not self.scrapes:
            return None
        last = self.scrapes[-1]
        pair = self._window(t)

        def rate(counter: Callable[[Scrape], float]) -> float | None:
            """The increase between the window's first and last scrape over the time
            between them."""
            if pair is None:
                return None
            a, b = pair
            span = b.time - a.time
            return max(0.0, counter(b) - counter(a)) / span if span > 0 else None

        buckets: dict[float, float] | None = None
        if pair is not None:
            a, b = pair
            buckets = {
                le: float(b.ttft_cumulative[i] - a.ttft_cumulative[i])
                for i, le in enumerate(VLLM_TTFT_BUCKETS)
            }
        return Signals(
            time=t,
            scraped_at=last.time,
            gauges=last.gauges,
            prompt_tokens_per_second=rate(lambda x: x.prompt_tokens),
            computed_prompt_tokens_per_second=rate(lambda x: x.computed_prompt_tokens),
            generation_tokens_per_second=rate(lambda x: x.generation_tokens),
            requests_per_second=rate(lambda x: float(x.finished)),
            ttft_buckets=buckets,
            ttft_sum=None if pair is None else max(0.0, pair[1].ttft_sum - pair[0].ttft_sum),
        )
