"""A fleet of model replicas under continuous batching, stepped in fixed ticks (pure).

Each replica runs the roofline of :mod:`distillery.sizing.memory`:

- **prefill** is compute-bound: a prompt of P tokens takes ``2 x params x P`` FLOPs at
  ``MFU`` of the GPUs' dense bf16 TFLOPS; prompts admitted in a tick are prefilled one
  after another, so a burst queues behind itself;
- **decode** is memory-bound: each step reads the weights and the live KV cache at
  ``MBU`` of the memory bandwidth, plus a fixed step overhead, and gives every running
  sequence one token;
- **admission** is bounded by the batch slots (maxConcurrency) and the KV cache (tokens
  from sizing); a sequence that outgrows the cache preempts the newest one, which goes
  back to the front of the queue and is prefilled again (vLLM's recompute);
- **cold start**: a new replica serves ``startup_seconds`` after it is created;
- **scale-down** drains: a removed replica takes no new requests and gets
  ``drain_seconds`` to finish what it holds; what is left then is dropped.

Sequences are kept in a heap keyed by the replica's token clock at which they finish,
so a tick costs O(finishing sequences), not O(running ones): a day of traffic in seconds.

TTFT of a request = queueing + its prefill (after those admitted before it in the tick)
+ one decode step. Every tick the fleet exposes what vLLM exports: running and waiting
requests and KV-cache use per replica, TTFT samples and prompt throughput, so policies
see the same signals they would see from Prometheus.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from distillery.simulate.workload import Request
from distillery.sizing.memory import MBU, MFU, STEP_OVERHEAD_S


@dataclass(frozen=True)
class ReplicaModel:
    """The per-replica constants of the fleet, from the placement."""

    weights_bytes: float
    kv_bytes_per_token: float
    kv_capacity_tokens: int
    max_seqs: int
    params: float
    tflops: float  # dense bf16, all GPUs of the replica
    bandwidth: float  # bytes/s, all GPUs of the replica
    gpus: int
    price_per_hour: float
    startup_seconds: float
    drain_seconds: float = 60.0
    mfu: float = MFU
    mbu: float = MBU
    step_overhead: float = STEP_OVERHEAD_S

    def prefill_seconds(self, tokens: float) -> float:
        return 2.0 * self.params * tokens / (self.tflops * self.mfu)

    def step_seconds(self, live_tokens: float) -> float:
        return self.step_overhead + (self.weights_bytes + live_tokens * self.kv_bytes_per_token) / (
            self.bandwidth * self.mbu
        )

    def decode_tokens_per_second(self, batch: int, context: float) -> float:
        return batch / self.step_seconds(batch * context) if batch else 0.0


@dataclass
class Outcome:
    """What happened to one request."""

    request: Request
    first_token: float | None = None
    finish: float | None = None
    dropped: bool = False

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.request.arrival


@dataclass
class _Seq:
    outcome: Outcome
    prompt: int
    remaining: float
    admitted_clock: float = 0.0


_ids = itertools.count()


@dataclass
class Replica:
    model: ReplicaModel
    created: float
    ready_at: float
    id: int = field(default_factory=lambda: next(_ids))
    draining_since: float | None = None
    queue: deque[_Seq] = field(default_factory=deque)
    # heap of (finish clock, tiebreak, seq)
    active: list[tuple[float, int, _Seq]] = field(default_factory=list)
    clock: float = 0.0  # tokens each running sequence has received since the start
    prompt_sum: float = 0.0  # prompt tokens of running sequences
    admitted_clock_sum: float = 0.0
    prefill_debt: float = 0.0
    prompt_tokens_done: float = 0.0
    generated_tokens: float = 0.0
    finished: int = 0

    def ready(self, now: float) -> bool:
        return self.draining_since is None and now >= self.ready_at

    @property
    def running(self) -> int:
        return len(self.active)

    @property
    def outstanding(self) -> int:
        return len(self.active) + len(self.queue)

    @property
    def kv_used(self) -> float:
        n = len(self.active)
        return self.prompt_sum + n * self.clock - self.admitted_clock_sum

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_used / self.model.kv_capacity_tokens)

    def _admit(self, seq: _Seq) -> None:
        seq.admitted_clock = self.clock
        heapq.heappush(self.active, (self.clock + seq.remaining, next(_ids), seq))
        self.prompt_sum += seq.prompt
        self.admitted_clock_sum += self.clock

    def _remove(self, entry: tuple[float, int, _Seq]) -> None:
        seq = entry[2]
        self.prompt_sum -= seq.prompt
        self.admitted_clock_sum -= seq.admitted_clock

    def step(self, t: float, dt: float, ttfts: list[tuple[float, float]]) -> None:
        m = self.model
        cursor = self.prefill_debt
        # Admit what fits, prefilling in order.
        while self.queue and len(self.active) < m.max_seqs:
            seq = self.queue[0]
            if self.kv_used + seq.prompt > m.kv_capacity_tokens and self.active:
                break
            self.queue.popleft()
            start = max(cursor, seq.outcome.request.arrival - t, 0.0)
            cursor = start + m.prefill_seconds(seq.prompt)
            self.prompt_tokens_done += seq.prompt
            if seq.outcome.first_token is None:
                first = t + cursor + m.step_seconds(self.kv_used + seq.prompt)
                seq.outcome.first_token = first
                ttfts.append((first, first - seq.outcome.request.arrival))
            self._admit(seq)
        left = dt - cursor
        if left <= 0:
            self.prefill_debt = -left
            return
        self.prefill_debt = 0.0
        if not self.active:
            return
        step = m.step_seconds(self.kv_used)
        tokens = left / step
        start_clock = self.clock
        self.clock += tokens
        self.generated_tokens += tokens * len(self.active)
        while self.active and self.active[0][0] <= self.clock:
            entry = heapq.heappop(self.active)
            self._remove(entry)
            entry[2].outcome.finish = t + cursor + (entry[0] - start_clock) * step
            self.finished += 1
        # A cache that overflows preempts the newest sequences (recomputed later).
        while self.active and self.kv_used > m.kv_capacity_tokens:
            newest = max(self.active, key=lambda e: e[2].admitted_clock)
            self.active.remove(newest)
            heapq.heapify(self.active)
            self._remove(newest)
            seq = newest[2]
            done = self.clock - seq.admitted_clock
            seq.prompt += int(done)
            seq.remaining = max(1.0, seq.remaining - done)
            self.queue.appendleft(seq)

    def drop_all(self) -> list[Outcome]:
        dropped = [s.outcome for s in self.queue] + [e[2].outcome for e in self.active]
        for o in dropped:
            o.dropped = True
        self.queue.clear()
        self.active.clear()
        return dropped


@dataclass
class Snapshot:
    """What a metrics scrape of the fleet would show at one time."""

    time: float
    ready: int
    starting: int
    draining: int
    running: list[int]
    waiting: list[int]
    kv_usage: list[float]
    pending: int  # requests waiting for any ready replica (router queue)


class Fleet:
    """Replicas, a least-outstanding router, and the books: GPU time and outcomes."""

    def __init__(self, model: ReplicaModel, initial: int, now: float = 0.0):
        self.model = model
        self.replicas: list[Replica] = [Replica(model, now, now) for _ in range(initial)]
        self.pending: deque[_Seq] = deque()
        self.outcomes: list[Outcome] = []
        self.ttfts: list[tuple[float, float]] = []
        self.replica_seconds = 0.0
        self.scale_events = 0

    @property
    def desired(self) -> int:
        return sum(1 for r in self.replicas if r.draining_since is None)

    def set_replicas(self, n: int, now: float) -> None:
        """Scale to ``n`` replicas: new ones cold-start; removed ones drain. Like a
        ReplicaSet, not-yet-ready replicas are removed first."""
        current = [r for r in self.replicas if r.draining_since is None]
        if n == len(current):
            return
        self.scale_events += 1
        if n > len(current):
            for _ in range(n - len(current)):
                self.replicas.append(Replica(self.model, now, now + self.model.startup_seconds))
            return
        victims = sorted(current, key=lambda r: (r.ready(now), r.outstanding, -r.created))
        for r in victims[: len(current) - n]:
            if not r.ready(now):
                self.replicas.remove(r)  # never served: gone at once
                self.replica_seconds += 0.0
            else:
                r.draining_since = now

    def _route(self, seq: _Seq, now: float) -> None:
        ready = [r for r in self.replicas if r.ready(now)]
        if not ready:
            self.pending.append(seq)
            return
        min(ready, key=lambda r: (r.outstanding, r.id)).queue.append(seq)

    def step(self, t: float, dt: float, arrivals: Sequence[Request]) -> None:
        while self.pending and any(r.ready(t) for r in self.replicas):
            self._route(self.pending.popleft(), t)
        for req in arrivals:
            outcome = Outcome(req)
            self.outcomes.append(outcome)
            self._route(_Seq(outcome, req.prompt_tokens, float(req.output_tokens)), t)
        for r in list(self.replicas):
            self.replica_seconds += min(dt, max(0.0, t + dt - r.created))
            if t + dt > r.ready_at:
                r.step(t, dt, self.ttfts)
            if r.draining_since is not None and (
                r.outstanding == 0 or t + dt - r.draining_since >= self.model.drain_seconds
            ):
                r.drop_all()
                self.replicas.remove(r)

    def snapshot(self, t: float) -> Snapshot:
        ready = [r for r in self.replicas if r.ready(t)]
        return Snapshot(
            time=t,
            ready=len(ready),
            starting=sum(1 for r in self.replicas if r.draining_since is None and not r.ready(t)),
            draining=sum(1 for r in self.replicas if r.draining_since is not None),
            running=[r.running for r in ready],
            waiting=[len(r.queue) for r in ready],
            kv_usage=[r.kv_usage for r in ready],
            pending=len(self.pending),
        )

    def finish(self, t: float) -> None:
        """End of the run: whatever is still in flight did not complete."""
        for r in self.replicas:
            for o in [s.outcome for s in r.queue] + [e[2].outcome for e in r.active]:
                if o.finish is None and o.first_token is None:
                    o.dropped = True
        for s in self.pending:
            s.outcome.dropped = True
