"""The planner: hand-checked memory figures and properties over wide inputs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillery.api.types import DistilledModelDeploymentSpec
from distillery.catalog import load_catalog
from distillery.sizing import PlanError, memory, plan
from distillery.sizing.planner import QUANT_RANK, TP_SIZES, evaluate, requirements

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
        # No maxConcurrency written: one full-length sequence must fit, the rest is what
        # the cheapest-per-token option holds.
        assert c.feasible and c.kv_cache_tokens >= 32768 and c.max_concurrency >= 8, name
        assert p.alternatives and "maxConcurrency is not set" in p.rule, name
        explicit = plan(make_spec(name, serving={"maxConcurrency": 64}), CATALOG)
        assert explicit.chosen.max_concurrency >= 64, name
        assert "hold maxConcurrency 64 sequences" in explicit.rule, name


def test_an_unset_concurrency_does_not_buy_gpus() -> None:
    # #20: a 7B at 16k context on L4 got 2x L4 (tensor parallel 2) only because the
    # default maxConcurrency's 64 x 4k tokens of KV did not fit one L4.
    spec = make_spec(
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        serving={"maxModelLen": 16384},
        placement={"gpuTypes": ["nvidia-l4"]},
        model={"quantization": "none"},
    )
    c = plan(spec, CATALOG).chosen
    assert (c.gpu.name, c.gpu_count) == ("nvidia-l4", 1)
    assert 12 <= c.max_concurrency <= 32  # vLLM holds ~20 such 4k sequences on one L4
    asked = spec.model_copy(
        update={"serving": spec.serving.model_copy(update={"max_concurrency": 64})}
    )
    assert plan(asked, CATALOG).chosen.gpu_count == 2  # written: it is held


def test_cost_per_token_not_per_replica_hour() -> None:
    # The cheaper replica-hour loses when it decodes fewer tokens for its price.
    spec = make_spec(
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        placement={"gpuTypes": ["nvidia-l40s", "nvidia-a100-80gb"]},
        serving={"maxConcurrency": 64},
    )
    p = plan(spec, CATALOG)
    l40s = next(a for a in p.alternatives if a.gpu.name == "nvidia-l40s" and a.feasible)
    assert l40s.cost_per_replica_hour < p.chosen.cost_per_replica_hour
    assert l40s.per_token > p.chosen.per_token
    assert l40s.reason.startswith("costs more per token")


def test_gpu_types_order_breaks_ties() -> None:
    prices = "gpus:\n  - {name: nvidia-a100-80gb, pricePerGpuHour: 2.0}\n"
    twin = load_catalog(
        [
            (
                "twin.yaml",
                prices
                + "  - {name: acme-a100, product: ACME-A100, memoryGiB: 79.6, bandwidthGBs: 2039,"
                " bf16Tflops: 312, computeCapability: '8.0', pricePerGpuHour: 2.0}\n",
            )
        ]
    )
    for order in (["acme-a100", "nvidia-a100-80gb"], ["nvidia-a100-80gb", "acme-a100"]):
        spec = make_spec("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", placement={"gpuTypes": order})
        p = plan(spec, twin)
        assert p.chosen.gpu.name == order[0]
        loser = next(a for a in p.alternatives if a.gpu.name == order[1] and a.feasible)
        assert "listed after" in loser.reason


def test_plan_never_asks_more_gpus_than_a_node_has() -> None:
    spec = make_spec(
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
        placement={"gpuTypes": ["nvidia-l4"], "maxNodesPerReplica": 1},
        model={"quantization": "none"},
    )
    assert plan(spec, CATALOG).chosen.gpu_count == 2  # the catalog says 8 per node
    one_gpu_nodes = CATALOG.with_node_gpus({"NVIDIA-L4": 1, "NVIDIA-L40S": 4})
    assert one_gpu_nodes.gpus["nvidia-l40s"].max_per_node == 4
    assert one_gpu_nodes.gpus["nvidia-h100-80gb"].max_per_node == 8  # no such node: catalog
    with pytest.raises(PlanError) as err:
        plan(spec, one_gpu_nodes)
    reasons = " ".join(a.reason for a in err.value.alternatives)
    assert "2 GPUs exceed the 1 nvidia-l4 this cluster's largest node offers" in reasons
    assert "spans nodes only of 8 GPUs or more" in reasons
    assert "On this cluster: nvidia-l4x2 2 GPUs exceed the 1" in str(err.value)
    # One-GPU nodes never make a group, with or without a node limit.
    unlimited = make_spec(
        spec.model.name, placement={"gpuTypes": ["nvidia-l4"]}, model={"quantization": "none"}
    )
    with pytest.raises(PlanError):
        plan(unlimited, one_gpu_nodes)
    # 8-GPU nodes do, up to placement.maxNodesPerReplica.
    r1 = make_spec("deepseek-ai/DeepSeek-R1", placement={"gpuTypes": ["nvidia-h100-80gb"]})
    assert plan(r1, CATALOG).chosen.nodes == 2
    one_node = make_spec(
        "deepseek-ai/DeepSeek-R1",
        placement={"gpuTypes": ["nvidia-h100-80gb"], "maxNodesPerReplica": 1},
    )
    with pytest.raises(PlanError) as err:
        plan(one_node, CATALOG)
    # The error says what would fit: two nodes, with the limit raised.
    assert "16x nvidia-h100-80gb on 2 nodes at fp8" in str(err.value)
    assert "with placement.maxNodesPerReplica: 4" in str(err.value)


def test_70b_on_l4_only_explains_what_fits() -> None:
    spec = make_spec(
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        placement={"gpuTypes": ["nvidia-l4"], "maxNodesPerReplica": 1},
        model={"quantization": "none"},
        serving={"maxConcurrency": 64},
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


def test_tensor_parallel_follows_what_the_engines_do() -> None:
    # 1.5B: 12 attention heads, 2 KV heads. TP 4 divides 12 and is a multiple of 2: vLLM
    # replicates the KV heads, one per rank, so the KV cache per token doubles.
    small = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    four = plan(make_spec(small, placement={"gpusPerReplica": 4}), CATALOG).chosen
    two = evaluate(requirements(make_spec(small), CATALOG), four.gpu, 2, four.quantization)
    assert four.feasible and four.tensor_parallel == 4
    model = CATALOG.models[small]
    assert memory.kv_bytes_per_token(model, "auto", 4) == 2 * memory.kv_bytes_per_token(model)
    assert four.kv_cache_tokens < 2 * two.kv_cache_tokens
    # TP 3 divides 12 but neither divides 2 nor is a multiple of it; the error says so
    # and does not blame memory.
    with pytest.raises(PlanError) as err:
        plan(make_spec(small, placement={"gpusPerReplica": 3}), CATALOG)
    assert all("neither divides the 2 KV heads" in a.reason for a in err.value.alternatives)
    assert "valid sizes: 1, 2, 4, 6" in str(err.value)
    assert "does not fit" not in str(err.value) and "GiB" not in str(err.value)
    # 7B: 28 attention heads; TP 3 does not divide them.
    with pytest.raises(PlanError, match="does not divide the 28 attention heads"):
        plan(
            make_spec("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", placement={"gpusPerReplica": 3}),
            CATALOG,
        )


def test_more_gpus_than_a_node_holds_names_the_node_limit() -> None:
    big = "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"
    # An engine with no multi-node launch keeps a replica on one node.
    spec = make_spec(big, placement={"gpusPerReplica": 16}, serving={"engine": "tgi"})
    with pytest.raises(PlanError) as err:
        plan(spec, CATALOG)
    reasons = " ".join(a.reason for a in err.value.alternatives)
    assert "a replica runs on one node: tgi has no multi-node launch" in reasons
    # vLLM spans whole nodes only: 12 GPUs are one and a half 8-GPU nodes.
    with pytest.raises(PlanError) as err:
        plan(make_spec(big, placement={"gpusPerReplica": 12}), CATALOG)
    reasons = " ".join(a.reason for a in err.value.alternatives)
    assert "a replica spans 2 or 4 whole nodes: 16 or 32" in reasons
    # 16 asked for explicitly: two nodes, tensor parallel within each, pipeline across.
    two = plan(make_spec(big, placement={"gpusPerReplica": 16}), CATALOG).chosen
    assert (two.nodes, two.tensor_parallel, two.pipeline_parallel) == (2, 8, 2)
    assert two.gpus_per_node == 8


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
    if spec.serving.max_concurrency is not None:
        assert c.max_concurrency >= req.max_concurrency
    # The budget is utilization x memory x GPUs.
    assert c.budget_gib == pytest.approx(
        spec.placement.gpu_memory_utilization * c.gpu.memory_gi_b * c.gpu_count
    )
    # Tensor parallelism divides the heads (KV heads: divides, or replicates them).
    assert model.attention_heads % c.tensor_parallel == 0
    assert model.kv_heads % c.tensor_parallel == 0 or c.tensor_parallel % model.kv_heads == 0
    # Allowed GPU type and size.
    if spec.placement.gpu_types != ["auto"]:
        assert c.gpu.name in spec.placement.gpu_types
    if spec.placement.gpus_per_replica != "auto":
        assert c.gpu_count == spec.placement.gpus_per_replica
    # No feasible candidate anywhere in the allowed space is cheaper per token, unless
    # the same GPU type holds the model on fewer GPUs or at higher precision (the only
    # reason an option is set aside): check exhaustively with an independent loop over
    # the space, not the planner's own list.
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
                if opt.feasible and opt.per_token < c.per_token:
                    leaner = [
                        evaluate(req, CATALOG.gpus[name], t, q)
                        for t in TP_SIZES
                        for q in ("none", "fp8", "int8", "awq", "gptq")
                        if t <= tp
                        and QUANT_RANK[q] <= QUANT_RANK[quant]
                        and (t, q) != (tp, quant)
                        and req.quantization in ("auto", q)
                        and (req.quantization != "auto" or q in ("none", "fp8"))
                        and spec.placement.gpus_per_replica in ("auto", t)
                    ]
                    assert any(o.feasible for o in leaner), (name, tp, quant)


def test_requirements_typical_default() -> None:
    req = requirements(make_spec(DISTILLS[0], serving={"maxModelLen": 2048}), CATALOG)
    assert req.typical_tokens == 2048
    assert req.kv_tokens_needed == 2048  # maxConcurrency not written: one sequence
    spec = make_spec(DISTILLS[0], serving={"maxModelLen": 2048, "maxConcurrency": 64})
    assert requirements(spec, CATALOG).kv_tokens_needed == 64 * 2048


R1 = "deepseek-ai/DeepSeek-R1"


def test_moe_active_parameters_match_the_model_cards() -> None:
    # The cards state 37B, 22B and 3.3B active; the catalog derives them from config.json.
    for name, active in ((R1, 37e9), ("Qwen/Qwen3-235B-A22B", 22e9), ("Qwen/Qwen3-30B-A3B", 3.3e9)):
        model = CATALOG.models[name]
        assert model.is_moe
        assert abs(model.active_params - active) / active < 0.03, name
    dense = CATALOG.models["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    assert dense.active_params == dense.params_billions * 1e9


def test_a_moe_decode_step_reads_the_experts_its_batch_routes_to() -> None:
    model = CATALOG.models[R1]
    one = memory.weight_bytes_read(model, "fp8", 1)
    batch = memory.weight_bytes_read(model, "fp8", 64)
    everything = memory.weight_bytes(model, "fp8")
    # One sequence reads the active parameters (37.5B at ~1 byte); 64 sequences, each
    # routing to 8 of 256 experts per layer, leave (1 - 8/256)^64 = 13% of them unread.
    assert 37e9 < one < 40e9
    unread = (1 - 8 / 256) ** 64 * model.routed_expert_params * memory.RELEASED_FP8_BYTES
    assert abs((everything - batch) - unread) / unread < 1e-9
    assert batch < everything


def test_mla_caches_one_latent_per_layer_on_every_rank() -> None:
    model = CATALOG.models[R1]
    # 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes, per rank.
    assert memory.kv_bytes_per_token(model, "auto", 1) == 61 * 576 * 2
    assert memory.kv_bytes_per_token(model, "auto", 8) == 8 * 61 * 576 * 2
    assert memory.kv_bytes_per_token(model, "fp8", 8) == 8 * 61 * 576


def test_deepseek_r1_takes_one_h200_node_or_two_h100_nodes() -> None:
    # Independent estimate from config.json: 671e9 parameters at one byte (fp8, plus one
    # fp32 scale per 128x128 block), the embedding and LM head (2 x 129280 x 7168) kept
    # in bf16: 673.0 GB = 626.8 GiB of weights.
    params, embed = 671e9, 2 * 129280 * 7168
    weights_gib = ((params - embed) * (1 + 4 / 16384) + embed * 2) / 2**30
    # 8 H100s offer 0.9 x 79.6 x 8 = 573 GiB: less than the weights alone.
    assert weights_gib > 0.9 * 79.6 * 8
    # 8 H200s offer 0.9 x 131.3 x 8 = 945 GiB: the weights, a 32k-token KV cache
    # (32768 x 8 ranks x 70,272 bytes = 17.2 GiB) and the runtime fit.
    kv_gib = 32768 * 8 * 61 * 576 * 2 / 2**30
    assert weights_gib + kv_gib < 0.9 * 131.3 * 8

    both = make_spec(
        R1,
        placement={"gpuTypes": ["nvidia-h200", "nvidia-h100-80gb"]},
        serving={"maxModelLen": 32768},
    )
    p = plan(both, CATALOG)
    c = p.chosen
    assert (c.gpu.name, c.gpus, c.nodes, c.quantization) == ("nvidia-h200", 8, 1, "fp8")
    assert abs(c.weights_gib - weights_gib) < 0.5 and abs(c.kv_needed_gib - kv_gib) < 0.1
    two_h100 = next(a for a in p.alternatives if a.gpu.name == "nvidia-h100-80gb" and a.nodes == 2)
    assert "one node holds the model (nvidia-h200x8, fp8)" in two_h100.reason

    h100 = make_spec(
        R1, placement={"gpuTypes": ["nvidia-h100-80gb"]}, serving={"maxModelLen": 32768}
    )
    c = plan(h100, CATALOG).chosen
    assert (c.gpus, c.nodes, c.gpus_per_node, c.quantization) == (16, 2, 8, "fp8")
    # vLLM: tensor parallel within a node, the two nodes as pipeline stages.
    assert (c.tensor_parallel, c.pipeline_parallel) == (8, 2)
    assert c.summary == "nvidia-h100-80gbx16 (2 nodes)"
    assert c.cost_per_replica_hour == 16 * CATALOG.gpus["nvidia-h100-80gb"].price_per_gpu_hour
    eight = evaluate(requirements(h100, CATALOG), c.gpu, 8, "fp8")
    assert "does not fit" in eight.reason
    # SGLang: one tensor-parallel group over both nodes (each rank caches the latent).
    sg = make_spec(
        R1,
        placement={"gpuTypes": ["nvidia-h100-80gb"]},
        serving={"maxModelLen": 32768, "engine": "sglang"},
    )
    c = plan(sg, CATALOG).chosen
    assert (c.nodes, c.tensor_parallel, c.pipeline_parallel) == (2, 16, 1)
    assert abs(c.kv_needed_gib - 2 * kv_gib) < 0.1
    # An engine with no multi-node launch cannot serve it on H100 at all.
    with pytest.raises(PlanError, match="does not fit nvidia-h100-80gb"):
        plan(
            make_spec(R1, placement={"gpuTypes": ["nvidia-h100-80gb"]}, serving={"engine": "tgi"}),
            CATALOG,
        )


def test_released_fp8_has_no_bf16_to_keep() -> None:
    spec = make_spec(R1, model={"quantization": "none"}, placement={"gpuTypes": ["nvidia-h200"]})
    assert plan(spec, CATALOG).chosen.quantization == "fp8"
    # A100 has no fp8: the reason says the model ships in fp8.
    with pytest.raises(PlanError) as err:
        plan(make_spec(R1, placement={"gpuTypes": ["nvidia-a100-80gb"]}), CATALOG)
    assert "released in fp8" in " ".join(a.reason for a in err.value.alternatives)


def test_expert_parallel_is_for_moe_models_on_engines_that_have_it() -> None:
    moe = make_spec("Qwen/Qwen3-235B-A22B", placement={"expertParallel": True})
    assert plan(moe, CATALOG).chosen.expert_parallel
    with pytest.raises(PlanError, match="needs a mixture-of-experts model"):
        plan(make_spec(DISTILLS[0], placement={"expertParallel": True}), CATALOG)
    with pytest.raises(PlanError, match="engine tgi has no expert parallelism"):
        plan(
            make_spec(
                "Qwen/Qwen3-235B-A22B",
                placement={"expertParallel": True},
                serving={"engine": "tgi"},
            ),
            CATALOG,
        )
