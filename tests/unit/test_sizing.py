"""The planner: hand-checked memory figures and properties over wide inputs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillery.api.types import DistilledModelDeploymentSpec
from distillery.catalog import load_catalog
from distillery.sizing import PlanError, memory, plan
from distillery.sizing.planner import TP_SIZES, evaluate, requirements

CATALOG = load_catalog()
DISTILLS = [m for m in CATALOG.models if "R1-Distill" in m]
GPU_NAMES = sorted(CATALOG.gpus)


def make_spec(model_name: str, **over: Any) -> DistilledModelDeploymentSpec:
    raw: dict[str, Any] = {"model": {"name": model_name}}
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return DistilledModelDeploymentSpec.model_validate(raw)


def test_kv_bytes_per_token_by_hand() -> None:
    # 2 (K,V) x layers x kv_heads x head_dim x 2 bytes
    qwen32 = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"]
    assert memory.kv_bytes_per_token(qwen32) == 2 * 64 * 8 * 128 * 2 == 262144
    llama70 = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Llama-70B"]
    assert memory.kv_bytes_per_token(llama70) == 2 * 80 * 8 * 128 * 2
    assert memory.kv_bytes_per_token(llama70, "fp8") == 2 * 80 * 8 * 128


def test_weights_by_hand() -> None:
    qwen7 = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    embed = 152064 * 3584 * 2  # untied embedding + LM head
    assert memory.weight_bytes(qwen7, "none") == pytest.approx(7.62e9 * 2)
    assert memory.weight_bytes(qwen7, "fp8") == pytest.approx(embed * 2 + (7.62e9 - embed))
    assert memory.weight_bytes(qwen7, "awq") < memory.weight_bytes(qwen7, "int8")


def test_default_plans_for_the_six_distills() -> None:
    for name in DISTILLS:
        p = plan(make_spec(name), CATALOG)
        c = p.chosen
        assert c.feasible and c.max_concurrency >= 64, name
        assert p.alternatives, name


def test_70b_on_l4_only_explains_what_fits() -> None:
    spec = make_spec(
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        placement={"gpuTypes": ["nvidia-l4"]},
        model={"quantization": "none"},
    )
    with pytest.raises(PlanError) as err:
        plan(spec, CATALOG)
    message = str(err.value)
    assert "does not fit nvidia-l4" in message and "Would fit:" in message
    assert all(not a.feasible for a in err.value.alternatives)
    assert any("short by" in a.reason for a in err.value.alternatives)


def test_max_model_len_beyond_positions() -> None:
    spec = make_spec("Qwen/QwQ-32B", serving={"maxModelLen": 131072})
    with pytest.raises(PlanError, match="exceeds Qwen/QwQ-32B's 40960 positions"):
        plan(spec, CATALOG)


def test_unknown_model_needs_architecture() -> None:
    with pytest.raises(ValueError, match=r"spec\.model\.architecture"):
        plan(make_spec("acme/secret-model"), CATALOG)
    spec = DistilledModelDeploymentSpec.model_validate(
        {
            "model": {
                "name": "acme/secret-model",
                "architecture": {
                    "paramsBillions": 3,
                    "layers": 24,
                    "hiddenSize": 2048,
                    "attentionHeads": 16,
                    "kvHeads": 4,
                },
            }
        }
    )
    assert plan(spec, CATALOG).chosen.feasible


def test_unknown_gpu_type() -> None:
    spec = make_spec(DISTILLS[0], placement={"gpuTypes": ["nvidia-b200"]})
    with pytest.raises(PlanError, match="unknown GPU type"):
        plan(spec, CATALOG)


def test_tp_that_does_not_divide_heads() -> None:
    # 1.5B: 12 attention heads, 2 KV heads: TP 4 divides 12 but not 2.
    spec = make_spec("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", placement={"gpusPerReplica": 4})
    with pytest.raises(PlanError) as err:
        plan(spec, CATALOG)
    assert all("does not divide" in a.reason for a in err.value.alternatives)


specs = st.builds(
    lambda model, gpus, tp, quant, conc, mml, util, typical, kvd: make_spec(
        model,
        placement={"gpuTypes": gpus, "gpusPerReplica": tp, "gpuMemoryUtilization": util},
        model={"quantization": quant},
        serving={
            "maxConcurrency": conc,
            "maxModelLen": mml,
            "typicalSequenceTokens": typical,
            "kvCacheDtype": kvd,
        },
    ),
    model=st.sampled_from(sorted(CATALOG.models)),
    gpus=st.one_of(
        st.just(["auto"]), st.lists(st.sampled_from(GPU_NAMES), min_size=1, max_size=4, unique=True)
    ),
    tp=st.one_of(st.just("auto"), st.sampled_from([1, 2, 3, 4, 8])),
    quant=st.sampled_from(["auto", "none", "fp8", "int8", "awq"]),
    conc=st.integers(1, 512),
    mml=st.sampled_from([2048, 8192, 32768, 131072]),
    util=st.floats(0.5, 0.98),
    typical=st.one_of(st.none(), st.integers(256, 16384)),
    kvd=st.sampled_from(["auto", "fp8"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_plan_properties(spec: DistilledModelDeploymentSpec) -> None:
    try:
        p = plan(spec, CATALOG)
    except PlanError as err:
        assert str(err)
        assert all(not a.feasible for a in err.alternatives)
        return
    c, req, model = p.chosen, p.requirements, p.model
    # It fits: weights + KV for the requirement + overhead within the budget.
    assert c.weights_gib + c.kv_needed_gib + c.overhead_gib <= c.budget_gib + 1e-9
    assert c.kv_cache_tokens >= req.kv_tokens_needed >= req.max_model_len
    assert c.max_concurrency >= req.max_concurrency
    # The budget is utilization x memory x GPUs.
    assert c.budget_gib == pytest.approx(
        spec.placement.gpu_memory_utilization * c.gpu.memory_gi_b * c.gpu_count
    )
    # Tensor parallelism divides the heads.
    assert model.attention_heads % c.tensor_parallel == 0
    assert model.kv_heads % c.tensor_parallel == 0
    # Allowed GPU type and size.
    if spec.placement.gpu_types != ["auto"]:
        assert c.gpu.name in spec.placement.gpu_types
    if spec.placement.gpus_per_replica != "auto":
        assert c.gpu_count == spec.placement.gpus_per_replica
    # No feasible candidate anywhere in the allowed space is cheaper: check exhaustively
    # with an independent loop over the space, not the planner's own list.
    names = spec.placement.gpu_types if spec.placement.gpu_types != ["auto"] else GPU_NAMES
    for name in names:
        for tp in TP_SIZES:
            for quant in ("none", "fp8", "int8", "awq", "gptq"):
                if req.quantization not in ("auto", quant):
                    continue
                if req.quantization == "auto" and quant not in ("none", "fp8"):
                    continue
                if spec.placement.gpus_per_replica not in ("auto", tp):
                    continue
                opt = evaluate(req, CATALOG.gpus[name], tp, quant)
                if opt.feasible:
                    assert opt.cost_per_replica_hour >= c.cost_per_replica_hour - 1e-9


@settings(max_examples=200, deadline=None)
@given(specs, st.integers(1, 4), st.sampled_from([1, 2, 4]))
def test_more_demand_never_cheaper(
    spec: DistilledModelDeploymentSpec, conc_factor: int, len_factor: int
) -> None:
    try:
        base = plan(spec, CATALOG)
    except PlanError:
        return
    serving = spec.serving.model_copy(
        update={
            "max_concurrency": min(4096, spec.serving.max_concurrency * conc_factor),
            "max_model_len": spec.serving.max_model_len * len_factor,
            "typical_sequence_tokens": (
                spec.serving.typical_sequence_tokens or min(spec.serving.max_model_len, 4096)
            ),
        }
    )
    harder = spec.model_copy(update={"serving": serving})
    try:
        more = plan(harder, CATALOG)
    except PlanError:
        return  # needing more than anything offers is not cheaper
    assert more.chosen.cost_per_replica_hour >= base.chosen.cost_per_replica_hour - 1e-9


def test_requirements_typical_default() -> None:
    req = requirements(make_spec(DISTILLS[0], serving={"maxModelLen": 2048}), CATALOG)
    assert req.typical_tokens == 2048
    assert req.kv_tokens_needed == max(2048, 64 * 2048)
