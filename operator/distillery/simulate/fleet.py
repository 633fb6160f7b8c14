"""A fleet of vLLM-style replicas under continuous batching, event by event (pure).

Each replica runs the engine's scheduler loop in aggregate:

- **steps**: every step gives each running sequence one token and spends the rest of the
  step's token budget (``max_num_batched_tokens``) on prompts, first come first served
  (chunked prefill; decodes are scheduled first). A step's duration comes from
  :class:`~distillery.sizing.steptime.StepModel` for what it holds, so prefill slows the
  decodes it shares steps with instead of stopping them.
- **first token** at the end of the step that computes a prompt's last chunk (vLLM
  samples it there), plus the per-request API overhead.
- **admission**: a request leaves the waiting queue when a batch slot (``max_num_seqs``)
  and KV-cache room for its prompt are free; a cache that overflows preempts the newest
  sequence, which goes back to the front of the queue and is recomputed (vLLM's
  recompute preemption).
- **rejection**: a request whose prompt plus output exceeds ``maxModelLen`` is refused
  at once, as vLLM answers 400; it is counted, never served.
- **cold start**: a new replica serves ``startup_seconds`` after it is created;
  **scale-down** drains: a removed replica takes no new requests and gets
  ``drain_seconds`` to finish what it holds; what is left then is dropped.

Between two events (an arrival, a prompt finishing its prefill, a sequence finishing)
a replica's batch does not change, so its step time is constant and it is advanced in
one stretch: a tick costs O(events), not O(steps), and a day of traffic replays in
seconds. Running sequences are a heap keyed by the replica's token clock at which they
finish.

The fleet keeps counters that only grow (prompt and generation tokens, finished
requests, the TTFT histogram observed when each first token is produced), like the
per-pod series Prometheus sums: removing a replica never makes a rate drop.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from distillery.engines import vllm
from distillery.simulate.workload import Request
from distillery.sizing.steptime import StepModel

# vLLM's own bucket boundaries of vllm:time_to_first_token_seconds, and +Inf: nothing
# between 1.0 and 2.5 s. The fleet observes TTFT into these, so policies read the
# histogram the way they read it in production.
VLLM_TTFT_BUCKETS: tuple[float, ...] = (*vllm.TTFT_BUCKETS, math.inf)


@dataclass(frozen=True)
class ReplicaModel:
    """The per-replica constants of the fleet, from the placement and the engine."""

    steps: StepModel
    kv_capacity_tokens: int
    max_seqs: int
    price_per_hour: float
    startup_seconds: float
    drain_seconds: float = 60.0
    batch_tokens: int = 8192  # max_num_batched_tokens
    max_model_len: int = 32768

    @property
    def gpus(self) -> int:
        return self.steps.gpus

    @property
    def api_seconds(self) -> float:
        return self.steps.constants.api_seconds

    def idle_ttft(self, prompt_tokens: int) -> float:
        return self.steps.idle_first_token(prompt_tokens, self.batch_tokens)

    def prefill_tokens_per_second(self) -> float:
        """Prompt tokens per second with whole steps of prefill (the compute bound)."""
        return self.batch_tokens / self.steps.seconds(0, self.batch_tokens, 0.0, 1024.0)


@dataclass
class Outcome:
    """What happened to one request."""

    request: Request
    first_token: float | None = None
    finish: float | None = None
    dropped: bool = False
    rejected: bool = False

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.request.arrival


@dataclass
class _Seq:
    outcome: Outcome
    prompt: int  # tokens it holds in the KV cache once prefilled (grows on preemption)
    compute: int  # of those, tokens to compute (the rest are prefix-cache hits)
    remaining: float  # output tokens still to generate after the first
    prefill_left: float = 0.0
    admitted_clock: float = 0.0

    @property
    def arrival(self) -> float:
        return self.outcome.request.arrival


@dataclass
class Counters:
    """Fleet-wide monotonic counters, as Prometheus sums them over pods."""

    prompt_tokens: float = 0.0  # vllm:prompt_tokens_total (cache hits included)
    computed_prompt_tokens: float = 0.0  # ..._by_source_total{source="local_compute"}
    generation_tokens: float = 0.0
    finished: int = 0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * len(VLLM_TTFT_BUCKETS))
    ttft_sum: float = 0.0

    def observe_ttft(self, value: float) -> None:
        self.ttft_sum += value
        i = bisect.bisect_left(VLLM_TTFT_BUCKETS, value)
        self.ttft_buckets[i] += 1  # per bucket; cumulated when read


_ids = itertools.count()


@dataclass
class Replica:
    model: ReplicaModel
    created: float
    ready_at: float
    counters: Counters
    id: int = field(default_factory=lambda: next(_ids))
    draining_since: float | None = None
    now: float = 0.0
    waiting: deque[_Seq] = field(default_factory=deque)
    prefilling: deque[_Seq] = field(default_factory=deque)
    prefill_left: float = 0.0
    # heap of (finish clock, tiebreak, seq)
    active: list[tuple[float, int, _Seq]] = field(default_factory=list)
    clock: float = 0.0  # tokens each running sequence has received since the start
    prompt_sum: float = 0.0  # prompt tokens of running sequences
    admitted_clock_sum: float = 0.0
    prefill_kv: float = 0.0  # KV reserved for admitted prompts still in prefill
    step_seconds: float = 0.0  # duration of the step in flight (0 when idle)

    def ready(self, now: float) -> bool:
        return self.draining_since is None and now >= self.ready_at

    @property
    def running(self) -> int:
        """vllm:num_requests_running: decoding plus prefilling."""
        return len(self.active) + len(self.prefilling)

    @property
    def queued(self) -> int:
        """vllm:num_requests_waiting."""
        return len(self.waiting)

    @property
    def outstanding(self) -> int:
        return len(self.active) + len(self.prefilling) + len(self.waiting)

    @property
    def kv_used(self) -> float:
        n = len(self.active)
        return self.prompt_sum + n * self.clock - self.admitted_clock_sum + self.prefill_kv

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_used / max(1, self.model.kv_capacity_tokens))

    def enqueue(self, seq: _Seq) -> None:
        self.waiting.append(seq)

    # -- the scheduler -------------------------------------------------------------

    def _admit(self) -> None:
        m = self.model
        while self.waiting and len(self.active) + len(self.prefilling) < m.max_seqs:
            seq = self.waiting[0]
            if seq.arrival > self.now:
                break
            if self.kv_used + seq.prompt > m.kv_capacity_tokens and (
                self.active or self.prefilling
            ):
                break
            self.waiting.popleft()
            seq.prefill_left = float(seq.compute)
            self.prefilling.append(seq)
            self.prefill_left += seq.compute
            self.prefill_kv += seq.prompt

    def _start_decoding(self, seq: _Seq, ttfts: list[tuple[float, float]]) -> None:
        self.prefilling.popleft()
        self.prefill_kv -= seq.prompt
        self.counters.prompt_tokens += seq.prompt
        o = seq.outcome
        if o.first_token is None:
            # A request joins at the next step boundary: on a busy replica it waits for
            # the step in flight, half a step on average (the fluid model starts at once).
            o.first_token = self.now + self.model.api_seconds + self.step_seconds / 2
            ttft = o.first_token - o.request.arrival
            ttfts.append((o.first_token, ttft))
            self.counters.observe_ttft(ttft)
            self.counters.generation_tokens += 1
        if seq.remaining <= 0:
            self._finish(seq, self.now)
            return
        seq.admitted_clock = self.clock
        heapq.heappush(self.active, (self.clock + seq.remaining, next(_ids), seq))
        self.prompt_sum += seq.prompt
        self.admitted_clock_sum += self.clock

    def _finish(self, seq: _Seq, when: float) -> None:
        seq.outcome.finish = when + self.model.api_seconds
        self.counters.finished += 1

    def _pop_finished(self) -> None:
        entry = heapq.heappop(self.active)
        seq = entry[2]
        self.prompt_sum -= seq.prompt
        self.admitted_clock_sum -= seq.admitted_clock
        self._finish(seq, self.now)

    def _preempt_overflow(self) -> None:
        m = self.model
        while self.active and self.kv_used > m.kv_capacity_tokens:
            newest = max(self.active, key=lambda e: e[2].admitted_clock)
            self.active.remove(newest)
            heapq.heapify(self.active)
            seq = newest[2]
            self.prompt_sum -= seq.prompt
            self.admitted_clock_sum -= seq.admitted_clock
            done = self.clock - seq.admitted_clock
            seq.prompt += int(done)
            seq.compute += int(done)
            seq.remaining = max(0.0, seq.remaining - done)
            self.waiting.appendleft(seq)

    def advance(self, until: float, ttfts: list[tuple[float, float]]) -> None:
        """Run the engine from ``self.now`` to ``until``, event by event."""
        m, steps = self.model, self.model.steps
        self.now = max(self.now, self.ready_at)
        while self.now < until:
            self._admit()
            b = len(self.active)
            next_arrival = self.waiting[0].arrival if self.waiting else math.inf
            if b == 0 and not self.prefilling:
                self.step_seconds = 0.0
                if next_arrival >= until:
                    self.now = until
                    return
                self.now = max(self.now, next_arrival)
                continue
            chunk = min(self.prefill_left, float(max(0, m.batch_tokens - b)))
            head = self.prefilling[0] if self.prefilling else None
            depth = (head.prompt - head.prefill_left + chunk / 2) if head else 0.0
            live = self.kv_used - self.prefill_kv
            t_step = steps.seconds(b, chunk, live, depth)
            busy_before = self.step_seconds > 0
            self.step_seconds = t_step if (b or busy_before) else 0.0
            horizon = until - self.now
            if next_arrival > self.now:
                horizon = min(horizon, next_arrival - self.now)
            if head is not None and chunk > 0:
                horizon = min(horizon, head.prefill_left / chunk * t_step)
            if b:
                horizon = min(horizon, max(0.0, self.active[0][0] - self.clock) * t_step)
            n_steps = horizon / t_step
            self.now += horizon
            if b:
                self.clock += n_steps
                self.counters.generation_tokens += n_steps * b
            if head is not None and chunk > 0:
                computed = n_steps * chunk
                self.counters.computed_prompt_tokens += computed
                head.prefill_left -= computed
                self.prefill_left -= computed
                if head.prefill_left <= 1e-6:
                    self.prefill_left -= head.prefill_left
                    head.prefill_left = 0.0
                    self._start_decoding(head, ttfts)
            while self.active and self.active[0][0] <= self.clock + 1e-9:
                self._pop_finished()
            self._preempt_overflow()

    def take_all(self) -> list[_Seq]:
        """Everything this replica holds, in arrival order (for a re-route)."""
        held = list(self.prefilling) + [e[2] for e in self.active] + list(self.waiting)
        return held

    def drop_all(self) -> list[Outcome]:
        dropped = [s.outcome for s in self.take_all()]
        for o in dropped:
            if o.finish is None:
                o.dropped = True
        self.waiting.clear()
        self.prefilling.clear()
        self.active.clear()
        return dropped


@dataclass
class Snapshot:
    """What a metrics scrape of the fleet would show at one time (gauges)."""

    time: float
    ready: int
    starting: int
    draining: int
    running: list[int]
    waiting: list[int]
    kv_usage: list[float]
    pending: int  # requests waiting for any ready replica (router queue)


@dataclass(frozen=True)
class ScaleEvent:
    time: float
    before: int
    after: int


class Fleet:
    """Replicas, a least-outstanding router, and the books: GPU time and outcomes."""

    def __init__(self, model: ReplicaModel, initial: int, now: float = 0.0):
        self.model = model
        self.counters = Counters()
        self.replicas: list[Replica] = [
            Replica(model, now, now, self.counters, now=now) for _ in range(initial)
        ]
        self.pending: deque[_Seq] = deque()
        self.outcomes: list[Outcome] = []
        self.ttfts: list[tuple[float, float]] = []
        self.replica_seconds = 0.0
        self.events: list[ScaleEvent] = []

    @property
    def scale_events(self) -> int:
        return len(self.events)

    @property
    def desired(self) -> int:
        return sum(1 for r in self.replicas if r.draining_since is None)

    def set_replicas(self, n: int, now: float) -> None:
        """Scale to ``n`` replicas: new ones cold-start; removed ones drain. Like a
        ReplicaSet, not-yet-ready replicas are removed first."""
        current = [r for r in self.replicas if r.draining_since is None]
        if n == len(current):
            return
        self.events.append(ScaleEvent(now, len(current), n))
        if n > len(current):
            for _ in range(n - len(current)):
                self.replicas.append(
                    Replica(
                        self.model,
                        now,
                        now + self.model.startup_seconds,
                        self.counters,
                        now=now,
                    )
                )
            return
        victims = sorted(current, key=lambda r: (r.ready(now), r.outstanding, -r.created))
        for r in victims[: len(current) - n]:
            if not r.ready(now):
                self.replicas.remove(r)  # never served: gone at once (time already billed)
            else:
                r.draining_since = now

    def _route(self, seq: _Seq, now: float) -> None:
        ready = [r for r in self.replicas if r.ready(now)]
        if not ready:
            self.pending.append(seq)
            return
        min(ready, key=lambda r: (r.outstanding, r.id)).enqueue(seq)

    def step(self, t: float, dt: float, arrivals: Sequence[Request]) -> None:
        """Advance from ``t`` to ``t + dt``; ``arrivals`` arrive within that interval."""
        end = t + dt
        while self.pending and any(r.ready(t) for r in self.replicas):
            self._route(self.pending.popleft(), t)
        for req in arrivals:
            outcome = Outcome(req)
            self.outcomes.append(outcome)
            if req.prompt_tokens + req.output_tokens > self.model.max_model_len:
                outcome.rejected = True
                continue
            # The first output token comes from the prefill step; the rest from decode.
            compute = max(1, req.prompt_tokens - req.cached_tokens)
            seq = _Seq(outcome, req.prompt_tokens, compute, float(req.output_tokens - 1))
            self._route(seq, t)
        for r in list(self.replicas):
            self.replica_seconds += min(dt, max(0.0, end - r.created))
            if end > r.ready_at:
                r.advance(end, self.ttfts)
            if r.draining_since is not None and (
                r.outstanding == 0 or end - r.draining_since >= self.model.drain_seconds
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
            waiting=[r.queued for r in ready],
            kv_usage=[r.kv_usage for r in ready],
            pending=len(self.pending),
        )

    def finish(self, t: float) -> None:
        """End of the run: whatever is still in flight did not complete."""
        for r in self.replicas:
            for s in r.take_all():
                if s.outcome.finish is None and s.outcome.first_token is None:
                    s.outcome.dropped = True
        for s in self.pending:
            s.outcome.dropped = True
