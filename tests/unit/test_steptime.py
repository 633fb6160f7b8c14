"""The step model by hand, and the replay of measured runs it is fitted on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillery.catalog import load_catalog
from distillery.simulate.calibration import (
    CACHE_BLOCK_TOKENS,
    compare,
    mape,
    reference,
    replay,
    stage_requests,
)
from distillery.simulate.fleet import ReplicaModel
from distillery.sizing import memory as mem
from distillery.sizing.steptime import FITTED, StepConstants, step_model

CATALOG = load_catalog()
H100 = CATALOG.gpus["nvidia-h100-80gb"]
DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"


def test_step_by_hand_7b_one_h100() -> None:
    m = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    sm = step_model(m, H100, 1, "none")
    c = FITTED
    kv = 2 * 28 * 4 * 128 * 2
    weights = mem.weight_bytes(m, "none")
    memory = weights / (3350e9 * c.eta_weights) + 64 * 2048 * kv / (3350e9 * c.eta_kv)
    compute = 2 * 7.62e9 * 64 / (989e12 * c.eta_compute)
    expect = c.step_seconds + 64 * c.seq_seconds + max(memory, compute)
    assert sm.seconds(64, 0, 64 * 2048) == pytest.approx(expect)
    # Decode of a 7B on one H100 is memory-bound: more sequences, same weights read.
    assert memory > compute


def test_tensor_parallel_pays_all_reduces() -> None:
    m = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Llama-70B"]
    one = step_model(m, H100, 1, "none")
    four = step_model(m, H100, 4, "none")
    c = FITTED
    # Four GPUs read the same bytes at four times the bandwidth, plus 80 x 3 all-reduces.
    m4 = four.weights_bytes / (4 * 3350e9 * c.eta_weights)
    assert four.seconds(0, 0, 0) == pytest.approx(
        c.step_seconds + c.allreduce_layer_seconds * 80 * 3 + max(m4, 0.0)
    )
    assert four.seconds(8, 0, 0) < one.seconds(8, 0, 0)


def test_compute_bound_when_the_step_holds_a_prompt() -> None:
    m = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    sm = step_model(m, H100, 1, "none")
    # 8192 prompt tokens: FLOPs dominate; twice the tokens take about twice the time.
    t1, t2 = sm.seconds(0, 4096, 0, 2048), sm.seconds(0, 8192, 0, 4096)
    assert 1.8 < (t2 - FITTED.step_seconds) / (t1 - FITTED.step_seconds) < 2.6


def test_mixture_of_experts_reads_all_weights_computes_active() -> None:
    m = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"]
    dense = step_model(m, H100, 2, "none")
    moe = step_model(m, H100, 2, "none", active_params_billions=3.0)
    assert moe.weights_bytes == dense.weights_bytes  # every expert is held and read
    assert moe.seconds(0, 8192, 0) < dense.seconds(0, 8192, 0)  # prompts need active FLOPs


def test_idle_first_token_chunks_the_prompt() -> None:
    m = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    sm = step_model(m, H100, 1, "none")
    one = sm.idle_first_token(1000, 8192)
    assert one == pytest.approx(FITTED.api_seconds + sm.seconds(0, 1000, 0, 500))
    long = sm.idle_first_token(20000, 8192)  # three chunks, later ones attend further back
    assert long > 20 * (one - FITTED.api_seconds)


def _stage() -> dict[str, object]:
    return {
        "rate": 4.0,
        "durationSeconds": 30,
        "prompt": {"min": 500, "p50": 600, "max": 700, "mean": 600},
        "output": {"min": 100, "p50": 200, "max": 300, "mean": 200},
        "ttft": {"mean": 0.05, "p50": 0.05, "p90": 0.06},
        "e2e": {"mean": 2.05},
        "outputTokensPerSecond": 800.0,
        "count": 120,
    }


def test_stage_requests_follow_the_stage() -> None:
    reqs = stage_requests(_stage(), seed=3, distinct_prompts=10)
    assert len(reqs) == 120
    assert reqs[1].arrival - reqs[0].arrival == pytest.approx(0.25)  # constant rate
    assert all(500 <= r.prompt_tokens <= 700 and 100 <= r.output_tokens <= 300 for r in reqs)
    assert all(r.cached_tokens == 0 for r in reqs[:10])
    for r in reqs[10:]:  # repeats hit the cache but for the last partial block
        assert 0 < r.prompt_tokens - r.cached_tokens <= CACHE_BLOCK_TOKENS
    assert reqs == stage_requests(_stage(), seed=3, distinct_prompts=10)


def test_reference_itl_is_token_weighted() -> None:
    ref = reference(_stage())
    assert ref.itl == pytest.approx((2.05 - 0.05) / (200 - 1))


def test_replay_measures_like_a_load_generator() -> None:
    m = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    sm = step_model(m, H100, 1, "none")
    rm = ReplicaModel(steps=sm, kv_capacity_tokens=400_000, max_seqs=128, price_per_hour=0.0,
                      startup_seconds=0.0, batch_tokens=2048)  # fmt: skip
    got = replay(rm, stage_requests(_stage(), 1), 30.0)
    assert got.completed == 120
    # Light load: TTFT is about one request alone; ITL about one small-batch step.
    alone = rm.idle_ttft(600)
    assert alone * 0.8 < got.ttft < alone * 3
    assert sm.seconds(1, 0, 700) * 0.9 < got.itl < sm.seconds(16, 0, 16 * 800) * 1.5
    errors = compare(got, reference(_stage()))
    assert set(errors) == {"ttft", "itl", "e2e", "throughput"}
    assert mape([errors, errors], "ttft") == pytest.approx(abs(errors["ttft"]))


def test_reference_data_is_consistent() -> None:
    doc = json.loads((DATA / "vllm-h100-inference-perf.json").read_text())
    assert doc["source"]["repository"] == "inference-sim/training"
    fit = [s for s in doc["stages"] if not s["heldOut"]]
    held = [s for s in doc["stages"] if s["heldOut"]]
    assert {s["profile"] for s in fit} == {"general"} and len(fit) == 8
    assert held and not {s["profile"] for s in held} & {"general"}
    assert {s["model"] for s in fit} == set(doc["models"])
    for s in doc["stages"]:
        # throughput = successes x mean output over the time to serve them
        served = s["count"] * s["output"]["mean"] / s["outputTokensPerSecond"]
        assert s["durationSeconds"] * 0.95 < served < s["durationSeconds"] + 400, s["run"]


def test_constants_are_physical() -> None:
    c = FITTED
    assert 0 < c.eta_weights <= 1 and 0 < c.eta_kv <= 1 and 0 < c.eta_compute <= 1
    assert c.step_seconds > 0 and c.api_seconds > 0 and c.seq_seconds >= 0
    assert StepConstants(**c.as_dict()) == c
