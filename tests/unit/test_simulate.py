"""The simulator: roofline capacity by hand, conservation, determinism, the anchors'
documented rules on scripted input, and the oracle as a lower bound."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from distillery.api.types import DistilledModelDeploymentSpec
from distillery.catalog import load_catalog
from distillery.simulate.engine import (
    POLICY_NAMES,
    Scenario,
    oracle_schedule,
    replica_model,
    run_policy,
    simulate,
)
from distillery.simulate.fleet import Snapshot
from distillery.simulate.policies import (
    AIBrixAPA,
    KedaProductionStack,
    KubeAI,
    LlmdSaturation,
    Static,
)
from distillery.simulate.workload import Request, load, load_servegen
from distillery.sizing import plan
from distillery.sizing.memory import MBU, MFU
from distillery.sizing.memory import STEP_OVERHEAD_S as STEP

CATALOG = load_catalog()
TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"


def scenario(model: str, gpu: str, **kw: object) -> Scenario:
    spec = DistilledModelDeploymentSpec.model_validate(
        {"model": {"name": model, "quantization": "none"}, "placement": {"gpuTypes": [gpu]}}
    )
    p = plan(spec, CATALOG)
    return Scenario(
        model=p.model,
        option=p.chosen,
        max_concurrency=64,
        typical_tokens=p.requirements.typical_tokens,
        slo_ttft=2.0,
        **kw,
    )  # type: ignore[arg-type]


def test_roofline_by_hand_7b_h100() -> None:
    rm = replica_model(scenario("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-h100-80gb"))
    # prefill: 2 x 7.62e9 FLOPs/token over 989 TFLOPS x MFU
    assert rm.prefill_seconds(1000) == pytest.approx(2 * 7.62e9 * 1000 / (989e12 * MFU))
    # decode step: weights (15.24 GB) + 64 x 2048 tokens x 57344 B/token over 3.35 TB/s
    # x MBU, plus the fixed step overhead
    kv = 2 * 28 * 4 * 128 * 2
    assert rm.kv_bytes_per_token == kv
    expect = STEP + (7.62e9 * 2 + 64 * 2048 * kv) / (3350e9 * MBU)
    assert rm.step_seconds(64 * 2048) == pytest.approx(expect)
    assert rm.decode_tokens_per_second(64, 2048) == pytest.approx(64 / expect)


def test_roofline_by_hand_70b_4xh100() -> None:
    rm = replica_model(scenario("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "nvidia-h100-80gb"))
    assert rm.gpus == 4 and rm.bandwidth == 4 * 3350e9
    kv = 2 * 80 * 8 * 128 * 2
    expect = STEP + (70.55e9 * 2 + 32 * 4096 * kv) / (4 * 3350e9 * MBU)
    assert rm.step_seconds(32 * 4096) == pytest.approx(expect)
    assert rm.prefill_seconds(2048) == pytest.approx(2 * 70.55e9 * 2048 / (4 * 989e12 * MFU))


def synthetic(n: int = 3000, rate: float = 3.0, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        # a ramp up and down over the run
        phase = i / n
        t += rng.expovariate(rate * (0.5 + 2 * min(phase, 1 - phase)))
        out.append(Request(t, rng.randint(100, 3000), rng.randint(50, 1500)))
    return out


def test_conservation_and_determinism() -> None:
    s = scenario("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-l40s", max_replicas=50)
    reqs = synthetic()
    a = simulate(reqs, s)
    b = simulate(reqs, s)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert set(a) == set(POLICY_NAMES)
    for name, r in a.items():
        assert r["requests"] == len(reqs), name
        assert r["completed"] + r["dropped"] == len(reqs), name
        assert 0.0 <= r["sloAttainment"] <= 1.0


def test_oracle_is_a_lower_bound_on_cost_at_equal_attainment() -> None:
    s = scenario("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-l40s", max_replicas=50)
    res = simulate(synthetic(seed=7), s)
    oracle = res["oracle"]
    for name, r in res.items():
        if name != "oracle" and r["sloAttainment"] >= oracle["sloAttainment"]:
            assert r["cost"] >= oracle["cost"], name
    assert res["static-peak"]["cost"] >= oracle["cost"]


def test_no_starting_delay_for_oracle_only() -> None:
    s = scenario("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-l40s")
    assert replica_model(s).startup_seconds > 30
    reqs = synthetic(500)
    r = run_policy(reqs, s, Static(replicas=2), zero_startup=True)
    assert r["completed"] == len(reqs)


def snap(
    t: float,
    ready: int,
    waiting: list[int],
    running: list[int] | None = None,
    kv: list[float] | None = None,
) -> Snapshot:
    return Snapshot(
        time=t,
        ready=ready,
        starting=0,
        draining=0,
        running=running or [0] * ready,
        waiting=waiting,
        kv_usage=kv or [0.0] * ready,
        pending=0,
    )


def test_keda_rule() -> None:
    p = KedaProductionStack()
    assert p.desired(snap(0, 1, [23]), 1, [], 0) == 5  # ceil(23 / 5), within +4
    assert p.desired(snap(15, 1, [60]), 1, [], 0) == 5  # at most max(2x, +4) per step
    assert p.desired(snap(30, 5, [5] * 5), 5, [], 0) == 5  # 25/5 = 5: inside tolerance
    # scale-down waits for 300 s of lower recommendations
    assert p.desired(snap(45, 5, [0] * 5), 5, [], 0) == 5
    assert p.desired(snap(400, 5, [0] * 5), 5, [], 0) == 1


def test_kubeai_rule() -> None:
    p = KubeAI()
    assert p.desired(snap(0, 1, [50], [200]), 1, [], 0) == 3  # ceil(250 / 100)
    assert p.desired(snap(10, 3, [0] * 3, [0] * 3), 3, [], 0) == 3  # avg 125 -> 2: wait 30 s
    assert p.desired(snap(40, 3, [0] * 3, [0] * 3), 3, [], 0) == 1  # avg of 250,0,0,0 = 62.5


def test_aibrix_apa_rule() -> None:
    p = AIBrixAPA()
    assert p.desired(snap(0, 2, [0, 0], kv=[0.52, 0.5]), 2, [], 0) == 2  # within 1 +- 0.1
    assert p.desired(snap(15, 2, [0, 0], kv=[0.9, 0.9]), 2, [], 0) == 3  # avg(.51,.9)=.705
    p2 = AIBrixAPA()
    assert p2.desired(snap(0, 2, [0, 0], kv=[1.0, 1.0]), 2, [], 0) == 4  # at most x2
    assert p2.desired(snap(15, 4, [0] * 4, kv=[0.0] * 4), 4, [], 0) == 4  # 300 s cooldown
    assert p2.desired(snap(400, 4, [0] * 4, kv=[0.0] * 4), 4, [], 0) == 2  # at most /2


def test_llmd_saturation_rule() -> None:
    p = LlmdSaturation()
    assert p.desired(snap(0, 2, [0, 0], kv=[0.75, 0.70]), 2, [], 0) == 3  # spare kv < 0.1
    p = LlmdSaturation()
    assert p.desired(snap(0, 2, [3, 3], kv=[0.1, 0.1]), 2, [], 0) == 3  # spare queue < 3
    p = LlmdSaturation()
    assert p.desired(snap(0, 4, [0] * 4, kv=[0.2] * 4), 4, [], 0) == 3  # 0.27 after: remove
    p = LlmdSaturation()
    assert p.desired(snap(0, 2, [0, 0], kv=[0.4, 0.4]), 2, [], 0) == 2  # 0.8 after: keep


def test_oracle_schedule_covers_peaks() -> None:
    s = scenario("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-l40s")
    burst = [Request(10 + i * 0.001, 500, 800) for i in range(300)]
    sched = dict(oracle_schedule(burst, s))
    rm = replica_model(s)
    slots = min(64, rm.kv_capacity_tokens // s.typical_tokens)
    assert sched[0.0] >= -(-300 // slots)


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


def test_real_traces_load() -> None:
    azure = load(TRACES / "azure-2023-code.csv", "azure")
    assert len(azure) == 8819 and 3400 < azure[-1].arrival < 3500
    sg = load_servegen(TRACES / "servegen-deepseek-r1", clients=[0, 1, 2, 3], duration=7200, seed=3)
    assert sg and all(a.arrival <= b.arrival for a, b in itertools.pairwise(sg))
    assert sg == load_servegen(
        TRACES / "servegen-deepseek-r1", clients=[0, 1, 2, 3], duration=7200, seed=3
    )
    mean_out = sum(r.output_tokens for r in sg) / len(sg)
    assert mean_out > 500  # reasoning outputs are long
