"""The simulator: fleet behaviour a vLLM engine shows, signals as Prometheus shows them,
the fairness rules of the benchmark, the anchors' documented rules on scripted input, and
the trace loaders."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from distillery.api.types import DistilledModelDeploymentSpec
from distillery.autoscale.histogram import histogram_quantile
from distillery.catalog import load_catalog
from distillery.simulate.engine import (
    POLICY_NAMES,
    Scenario,
    clairvoyant_schedule,
    feasible,
    flaps,
    initial_replicas,
    need_schedule,
    replica_model,
    run_policy,
    simulate,
)
from distillery.simulate.fleet import (
    VLLM_TTFT_BUCKETS,
    Counters,
    Fleet,
    Outcome,
    Replica,
    ScaleEvent,
    Snapshot,
    _Seq,
)
from distillery.simulate.policies import (
    AIBrixAPA,
    KedaProductionStack,
    KubeAI,
    LlmdSaturation,
    Static,
)
from distillery.simulate.signals import PrometheusView, Signals
from distillery.simulate.workload import Request, load, load_servegen

CATALOG = load_catalog()
TRACES = Path(__file__).resolve().parents[2] / "benchmarks" / "traces"
SEVEN_B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"


def scenario(model: str = SEVEN_B, gpu: str = "nvidia-l40s", **kw: Any) -> Scenario:
    spec = DistilledModelDeploymentSpec.model_validate(
        {"model": {"name": model, "quantization": "none"}, "placement": {"gpuTypes": [gpu]}}
    )
    from distillery.sizing import plan

    p = plan(spec, CATALOG)
    return Scenario(
        model=p.model,
        option=p.chosen,
        max_concurrency=64,
        typical_tokens=p.requirements.typical_tokens,
        slo_ttft=2.0,
        **kw,
    )


def synthetic(n: int = 1500, rate: float = 2.0, seed: int = 1) -> list[Request]:
    """A ramp up and down, prompts and outputs of a reasoning service."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        phase = i / n
        t += rng.expovariate(rate * (0.5 + 2 * min(phase, 1 - phase)))
        out.append(Request(t, rng.randint(100, 3000), rng.randint(50, 1500)))
    return out


def seq(req: Request) -> _Seq:
    return _Seq(Outcome(req), req.prompt_tokens, req.prompt_tokens, float(req.output_tokens - 1))


# -- the engine, one replica ---------------------------------------------------------


def test_first_token_at_the_end_of_prefill() -> None:
    rm = replica_model(scenario())
    r = Replica(rm, 0.0, 0.0, Counters())
    req = Request(1.0, 3000, 5)
    s = seq(req)
    r.enqueue(s)
    ttfts: list[tuple[float, float]] = []
    r.advance(5.0, ttfts)
    # Alone on an idle replica: the prompt's own prefill (one chunk) and the API overhead.
    assert s.outcome.ttft == pytest.approx(rm.idle_ttft(3000), rel=1e-6)
    assert ttfts == [(s.outcome.first_token, s.outcome.ttft)]
    # Four more tokens, one decode step each.
    step = rm.steps.seconds(1, 0, 3002)
    assert s.outcome.first_token is not None
    assert s.outcome.finish == pytest.approx(
        s.outcome.first_token + 4 * step, rel=0.01
    )  # KV grows by a token a step: within 1%


def test_decodes_keep_running_while_prompts_prefill() -> None:
    """No tick artefact: a burst of long prompts slows the running sequences' steps but
    does not stop them until the burst is prefilled."""
    rm = replica_model(scenario())
    r = Replica(rm, 0.0, 0.0, Counters())
    running = seq(Request(0.0, 100, 100_000))
    r.enqueue(running)
    ttfts: list[tuple[float, float]] = []
    r.advance(5.0, ttfts)
    clock_before = r.clock
    for i in range(6):
        r.enqueue(seq(Request(5.0 + i * 1e-3, 8000, 10)))
    r.advance(6.0, ttfts)
    burst = 6 * 8000 / rm.prefill_tokens_per_second()
    assert burst > 1.0  # the burst alone takes longer than the second we watch
    longest = rm.steps.seconds(7, rm.batch_tokens, 100_000, rm.batch_tokens)
    assert r.clock - clock_before >= 1.0 / longest  # a token every step, even mixed ones


def test_admission_and_preemption_respect_the_cache() -> None:
    s = scenario()
    rm = replica_model(s)
    tight = replace(rm, kv_capacity_tokens=5000)
    small = Replica(tight, 0.0, 0.0, Counters())
    for _ in range(4):
        small.enqueue(seq(Request(0.0, 2000, 3000)))
    ttfts: list[tuple[float, float]] = []
    small.advance(0.5, ttfts)
    assert small.running == 2 and small.queued == 2  # 2 x 2000 fits, a third does not
    small.advance(120.0, ttfts)
    assert small.kv_used <= 5000 + 1e-6  # overflow preempts instead of exceeding the cache


def test_requests_longer_than_max_model_len_are_rejected() -> None:
    s = scenario(max_model_len=4096)
    fleet = Fleet(replica_model(s), 1)
    fleet.step(0.0, 1.0, [Request(0.5, 4000, 200), Request(0.6, 100, 100)])
    assert [o.rejected for o in fleet.outcomes] == [True, False]


# -- signals as Prometheus shows them --------------------------------------------------


def test_counters_survive_replica_removal() -> None:
    s = scenario()
    fleet = Fleet(replica_model(s, startup=0.0), 3)
    view = PrometheusView()
    reqs = [Request(i * 0.1, 1000, 50) for i in range(1200)]  # 10 req/s, 10k prompt tok/s
    t, i = 0.0, 0
    view.observe(0.0, fleet)
    while t < 120:
        j = i
        while j < len(reqs) and reqs[j].arrival < t + 1:
            j += 1
        fleet.step(t, 1.0, reqs[i:j])
        i, t = j, t + 1
        view.observe(t, fleet)
        if t == 60:
            fleet.set_replicas(1, t)  # two drain and leave
    assert len(fleet.replicas) == 1
    sig = view.signals(120.0)
    assert sig is not None and sig.prompt_tokens_per_second is not None
    assert sig.prompt_tokens_per_second == pytest.approx(10_000, rel=0.1)


def test_rates_need_two_scrapes_in_the_window() -> None:
    fleet = Fleet(replica_model(scenario(), startup=0.0), 1)
    view = PrometheusView()
    view.observe(0.0, fleet)
    fleet.step(0.0, 1.0, [Request(0.1, 5000, 10)])
    sig = view.signals(1.0)
    assert sig is not None and sig.prompt_tokens_per_second is None  # no 1 s rate
    assert sig.scraped_at == 0.0  # gauges as of the last scrape, not live


def test_ttft_enters_the_histogram_at_the_first_token() -> None:
    s = scenario()
    fleet = Fleet(replica_model(s, startup=0.0), 1)
    view = PrometheusView(interval=1.0)
    big = Request(0.0, 30_000, 10)  # several seconds of prefill
    view.observe(0.0, fleet)
    fleet.step(0.0, 1.0, [big])
    for t in range(1, 30):
        fleet.step(float(t), 1.0, [])
        view.observe(float(t + 1), fleet)
        if fleet.outcomes[0].first_token is None:
            assert sum(fleet.counters.ttft_buckets) == 0
    first = fleet.outcomes[0].first_token
    assert first is not None and first > 2.0
    assert sum(fleet.counters.ttft_buckets) == 1


def test_histogram_quantile_on_vllm_buckets() -> None:
    # Hand-computed, as Prometheus does it: rank 38 of 40 falls in (1.0, 2.5].
    buckets = {0.5: 10.0, 1.0: 20.0, 2.5: 40.0, float("inf"): 40.0}
    assert histogram_quantile(0.95, buckets) == pytest.approx(1.0 + 1.5 * 18 / 20)
    # Every request at 1.5 s: vLLM has no boundary between 1.0 and 2.5, so p95 reads 2.425.
    counters = Counters()
    for _ in range(100):
        counters.observe_ttft(1.5)
    cumulative = list(itertools.accumulate(counters.ttft_buckets))
    buckets = dict(zip(VLLM_TTFT_BUCKETS, map(float, cumulative), strict=True))
    got = histogram_quantile(0.95, buckets)
    assert got == pytest.approx(1.0 + 1.5 * 0.95)


# -- fairness --------------------------------------------------------------------------


def test_every_policy_starts_in_the_same_state() -> None:
    s = scenario(max_replicas=40)
    reqs = synthetic(800, rate=3.0)
    instant = need_schedule(reqs, s)
    for name, start in (("warm", instant[0][1]), ("cold", 1)):
        res = simulate(reqs, s, scenario=name)
        firsts = {p: r["replicas"][0] for p, r in res.items()}
        assert {v[1] for v in firsts.values()} == {start}, (name, firsts)
        assert initial_replicas(instant, name) == start


def test_conservation_and_determinism() -> None:
    s = scenario(max_replicas=40)
    reqs = synthetic()
    a = simulate(reqs, s)
    b = simulate(reqs, s)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert set(a) == set(POLICY_NAMES)
    for name, r in a.items():
        assert r["requests"] == len(reqs), name
        assert r["completed"] + r["dropped"] + r["rejected"] == len(reqs), name
        assert 0.0 <= r["sloAttainment"] <= r["sloAttainmentFeasible"] <= 1.0, name


@pytest.mark.parametrize("seed", [3, 7])
def test_clairvoyant_is_not_beaten(seed: int) -> None:
    """No real policy reaches clairvoyant's attainment at a lower cost."""
    s = scenario(max_replicas=40)
    res = simulate(synthetic(seed=seed), s)
    c = res["clairvoyant"]
    assert c["reachedTarget"] and c["sloAttainmentFeasible"] >= 0.99
    for name, r in res.items():
        if name in ("clairvoyant", "instant"):
            continue
        if r["sloAttainmentFeasible"] >= c["sloAttainmentFeasible"]:
            assert r["cost"] >= c["cost"], name


def test_clairvoyant_starts_replicas_one_cold_start_ahead() -> None:
    s = scenario()
    instant = [(0.0, 1), (60.0, 1), (120.0, 1), (180.0, 5), (240.0, 2)]
    # lead 100 s: the need of minute 3 is provisioned from minute 1
    sched = clairvoyant_schedule(instant, 100.0, 0.0, s)
    assert [n for _, n in sched] == [1, 5, 5, 5, 2]
    assert [n for _, n in clairvoyant_schedule(instant, 100.0, 0.5, s)] == [2, 8, 8, 8, 3]


def test_need_schedule_covers_a_burst() -> None:
    s = scenario()
    burst = [Request(10 + i * 0.001, 500, 800) for i in range(300)]
    sched = dict(need_schedule(burst, s))
    rm = replica_model(s)
    slots = min(64, rm.kv_capacity_tokens // s.typical_tokens)
    assert sched[0.0] >= -(-300 // slots)


def test_feasibility() -> None:
    s = scenario(max_model_len=32768)
    rm = replica_model(s)
    assert feasible(Request(0, 2000, 500), rm, 2.0)
    assert not feasible(Request(0, 32000, 1000), rm, 2.0)  # over maxModelLen
    assert not feasible(Request(0, 30000, 10), rm, 0.5)  # its prefill alone exceeds the SLO
    reqs = [Request(i * 0.5, 2000, 100) for i in range(100)] + [Request(50.1, 31000, 10)]
    r = run_policy(reqs, replace_slo(s, 0.5), Static(replicas=2), initial=2)
    assert r["infeasible"] == 1
    assert r["sloAttainment"] < r["sloAttainmentFeasible"]


def replace_slo(s: Scenario, slo: float) -> Scenario:
    return replace(s, slo_ttft=slo)


def test_flaps_count_reversals_within_five_minutes() -> None:
    ev = [
        ScaleEvent(0, 1, 3),
        ScaleEvent(100, 3, 2),  # down 100 s after up: flap
        ScaleEvent(500, 2, 4),  # up 400 s after down: no flap
        ScaleEvent(520, 4, 6),  # same direction: no flap
        ScaleEvent(600, 6, 5),  # down 80 s after up: flap
    ]
    assert flaps(ev) == 2


# -- the anchors' documented rules ----------------------------------------------------


def sig(
    t: float,
    ready: int,
    waiting: list[int],
    running: list[int] | None = None,
    kv: list[float] | None = None,
) -> Signals:
    snap = Snapshot(
        time=t,
        ready=ready,
        starting=0,
        draining=0,
        running=running or [0] * ready,
        waiting=waiting,
        kv_usage=kv or [0.0] * ready,
        pending=0,
    )
    return Signals(t, t, snap, None, None, None, None, None)


def test_keda_rule() -> None:
    p = KedaProductionStack()
    assert p.desired(sig(0, 1, [23]), 1) == 5  # ceil(23 / 5), within +4
    assert p.desired(sig(15, 1, [60]), 1) == 5  # at most max(2x, +4) per step
    assert p.desired(sig(30, 5, [5] * 5), 5) == 5  # 25/5 = 5: inside tolerance
    assert p.desired(sig(45, 5, [0] * 5), 5) == 5  # scale-down waits 300 s
    assert p.desired(sig(400, 5, [0] * 5), 5) == 1
    tuned = KedaProductionStack(target=40.0, on_running=True)
    assert tuned.desired(sig(0, 1, [0], [100]), 1) == 3  # running counts: ceil(100 / 40)


def test_kubeai_rule() -> None:
    p = KubeAI()
    assert p.desired(sig(0, 1, [50], [200]), 1) == 3  # ceil(250 / 100)
    assert p.desired(sig(10, 3, [0] * 3, [0] * 3), 3) == 3  # avg 125 -> 2: wait 30 s
    assert p.desired(sig(40, 3, [0] * 3, [0] * 3), 3) == 1  # avg of 250,0,0,0 = 62.5


def test_aibrix_apa_rule() -> None:
    p = AIBrixAPA()
    assert p.desired(sig(0, 2, [0, 0], kv=[0.52, 0.5]), 2) == 2  # within 1 +- 0.1
    assert p.desired(sig(15, 2, [0, 0], kv=[0.9, 0.9]), 2) == 3  # avg(.51,.9)=.705
    p2 = AIBrixAPA()
    assert p2.desired(sig(0, 2, [0, 0], kv=[1.0, 1.0]), 2) == 4  # at most x2
    assert p2.desired(sig(15, 4, [0] * 4, kv=[0.0] * 4), 4) == 4  # 300 s cooldown
    assert p2.desired(sig(400, 4, [0] * 4, kv=[0.0] * 4), 4) == 2  # at most /2


def test_llmd_saturation_rule() -> None:
    p = LlmdSaturation()
    assert p.desired(sig(0, 2, [0, 0], kv=[0.75, 0.70]), 2) == 3  # spare kv < 0.1
    p = LlmdSaturation()
    assert p.desired(sig(0, 2, [3, 3], kv=[0.1, 0.1]), 2) == 3  # spare queue < 3
    p = LlmdSaturation()
    assert p.desired(sig(0, 4, [0] * 4, kv=[0.2] * 4), 4) == 3  # 0.27 after: remove
    p = LlmdSaturation()
    assert p.desired(sig(0, 2, [0, 0], kv=[0.4, 0.4]), 2) == 2  # 0.8 after: keep


def test_unknown_policy_is_refused_before_running() -> None:
    with pytest.raises(ValueError, match="valid are distillery"):
        simulate([Request(0, 10, 10)], scenario(), ["distillery", "hpa"])


# -- loaders ---------------------------------------------------------------------------


def test_loaders(tmp_path: Path) -> None:
    jl = tmp_path / "t.jsonl"
    jl.write_text(
        '{"timestamp": 1000, "input_length": 10, "output_length": 5}\n'
        '{"timestamp": 3500, "input_length": 20, "output_length": 7}\n'
    )
    assert load(jl, "jsonl") == [Request(0.0, 10, 5), Request(2.5, 20, 7)]
    cs = tmp_path / "t.csv"
    cs.write_text("timestamp_s,input_tokens,output_tokens\n0,1,2\n4,3,4\n")
    assert [r.arrival for r in load(cs, "csv", time_scale=2)] == [0.0, 2.0]
    assert len(load(cs, "csv", rate_scale=3)) == 6
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp_s,input_tokens,output_tokens\nx,1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        load(bad, "csv")
    with pytest.raises(ValueError, match=r"missing\.csv"):
        load(tmp_path / "missing.csv", "csv")


def test_real_traces_load_from_the_repository() -> None:
    azure = load(TRACES / "azure-2023-code.csv", "azure")  # read from the .gz beside it
    assert len(azure) == 8819 and 3400 < azure[-1].arrival < 3500
    sg = load_servegen(TRACES / "servegen-deepseek-r1", clients=[0, 1, 2, 3], duration=7200, seed=3)
    assert sg and all(a.arrival <= b.arrival for a, b in itertools.pairwise(sg))
    assert sg == load_servegen(
        TRACES / "servegen-deepseek-r1", clients=[0, 1, 2, 3], duration=7200, seed=3
    )
    assert sum(r.output_tokens for r in sg) / len(sg) > 500  # reasoning outputs are long
    mooncake = load(TRACES / "mooncake" / "synthetic_trace.jsonl", "jsonl")
    assert len(mooncake) == 3993
    assert sum(r.prompt_tokens for r in mooncake) / len(mooncake) > 10_000  # long prompts
