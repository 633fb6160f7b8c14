"""Memory and speed estimates for one replica of a model on N GPUs (pure arithmetic).

Memory per replica = weights + KV cache + runtime overhead, against
``gpuMemoryUtilization x GPU memory x GPUs`` (the share vLLM-style engines claim).

- weights: the embedding and LM-head matrices stay in 16-bit (engines do not quantize
  them), every other parameter takes the quantization's bytes per weight; 4-bit formats
  carry a 16-bit scale and zero point per group of 128 weights.
- KV cache per token: 2 (K and V) x layers x kv_heads x head_dim x bytes of the KV dtype;
  with multi-head latent attention (DeepSeek-V3/R1) one latent of kv_lora_rank plus the
  rope key per layer, held by every tensor-parallel rank.
- mixture of experts: memory holds every expert; a decode step reads the experts its
  batch routes to (:meth:`ModelEntry.unread_expert_fraction`), prefill computes with the
  active parameters.
- overhead per GPU: CUDA context and allocator slack, CUDA graphs, NCCL buffers when
  tensor-parallel, plus the activation peak of one batch of ``BATCHED_TOKENS`` (sharded
  by tensor parallelism) and the fp32 logits of one decode step.

Speed follows the roofline: prefill is compute-bound (2 x params FLOPs per prompt token
over dense bf16 TFLOPS at ``MFU``), decode is memory-bound (every step reads the weights
and the live KV cache at ``MBU`` of the bandwidth). The efficiency constants are stated
here once; the simulator imports them, so the planner and the simulator agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from distillery.catalog import GpuType, ModelEntry

GIB = float(1 << 30)

# Bytes per weight by quantization. 4-bit: 0.5 plus an fp16 scale and zero per 128.
BYTES_PER_WEIGHT: dict[str, float] = {
    "none": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "awq": 0.5 + 4.0 / 128,
    "gptq": 0.5 + 4.0 / 128,
}

# Runtime overhead per GPU, GiB: CUDA context + allocator slack, CUDA graphs, and NCCL
# buffers for tensor parallelism. Typical of what vLLM reports as non-torch memory and
# graph capture memory at start-up.
CONTEXT_GIB = 1.0
CUDA_GRAPHS_GIB = 0.5
NCCL_GIB = 0.5
# Tokens in one scheduled batch (vLLM's max_num_batched_tokens with chunked prefill).
BATCHED_TOKENS = 8192

# Roofline efficiencies: model FLOPs utilization of prefill and memory-bandwidth
# utilization of decode, plus a fixed cost per decode step. Calibrated against BLIS's
# fits of vLLM v0.8.4 on H100 and A100-80 (Llama-3.1-8B tp1/tp2, Llama-3.3-70B tp4;
# inference-sim defaults.yaml): mean absolute error 28% over TTFT at a 2,048-token
# prompt and decode throughput at batch 64 (44% before); `benchmarks/fidelity.py`.
MFU = 0.60
MBU = 0.85
STEP_OVERHEAD_S = 0.002


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-replica memory, bytes."""

    weights: float
    overhead: float
    kv_per_token: float
    budget: float

    @property
    def kv_space(self) -> float:
        """Bytes left for the KV cache once weights and overhead are in."""
        return self.budget - self.weights - self.overhead

    @property
    def kv_tokens(self) -> int:
        return max(0, int(self.kv_space // self.kv_per_token))


def embedding_params(model: ModelEntry) -> float:
    matrices = 1 if model.tied_embeddings else 2
    return float(model.vocab_size * model.hidden_size * matrices)


# FP8 checkpoints as DeepSeek releases them: one byte per weight plus an fp32 scale per
# 128 x 128 block.
RELEASED_FP8_BYTES = 1.0 + 4.0 / (128 * 128)


def bytes_per_weight(model: ModelEntry, quantization: str) -> float:
    if model.released_fp8 and quantization in ("none", "fp8"):
        return RELEASED_FP8_BYTES
    return BYTES_PER_WEIGHT[quantization]


def weight_bytes(model: ModelEntry, quantization: str) -> float:
    total = model.params_billions * 1e9
    embed = min(embedding_params(model), total)
    return embed * 2.0 + (total - embed) * bytes_per_weight(model, quantization)


def checkpoint_bytes(model: ModelEntry, quantization: str) -> float:
    """Bytes of the checkpoint on disk: what a weight cache holds. fp8 is quantized
    online from the bf16 checkpoint (unless the model was released in fp8); int8, AWQ
    and GPTQ are checkpoints quantized that way."""
    return weight_bytes(model, "none" if quantization == "fp8" else quantization)


def expert_bytes(model: ModelEntry, quantization: str) -> float:
    """Bytes of the routed experts (part of :func:`weight_bytes`)."""
    return model.routed_expert_params * bytes_per_weight(model, quantization)


def weight_bytes_read(model: ModelEntry, quantization: str, tokens: float) -> float:
    """Weight bytes one step over ``tokens`` tokens reads: all of a dense model; the
    shared part and the experts the batch routes to of a mixture of experts."""
    unread = expert_bytes(model, quantization) * model.unread_expert_fraction(tokens)
    return weight_bytes(model, quantization) - unread


def kv_bytes_per_token(
    model: ModelEntry, kv_cache_dtype: str = "auto", tensor_parallel: int = 1
) -> float:
    """KV bytes one token takes across the replica's GPUs.

    With more tensor-parallel ranks than KV heads, vLLM and SGLang replicate the KV heads
    so each rank holds one: the replica then stores ``tensor_parallel`` heads, not
    ``kv_heads``.
    """
    dtype_bytes = 1.0 if kv_cache_dtype == "fp8" else 2.0
    if model.is_mla:
        # One latent per token and layer, not split by heads: every rank holds all of it.
        latent = (model.kv_lora_rank or 0) + (model.qk_rope_head_dim or 0)
        return model.layers * latent * dtype_bytes * max(1, tensor_parallel)
    heads = max(model.kv_heads, tensor_parallel)
    return 2.0 * model.layers * heads * model.resolved_head_dim * dtype_bytes


def overhead_bytes(model: ModelEntry, gpus: int, max_seqs: int) -> float:
    per_gpu = CONTEXT_GIB + CUDA_GRAPHS_GIB + (NCCL_GIB if gpus > 1 else 0.0)
    # Activations of one batch: residual stream, attention/MLP intermediates (bf16).
    per_token = 2.0 * (4 * model.hidden_size + 2 * model.resolved_intermediate_size)
    activations = BATCHED_TOKENS * per_token / gpus
    logits = 4.0 * model.vocab_size * min(max_seqs, BATCHED_TOKENS)
    return per_gpu * gpus * GIB + (activations + logits) * gpus


def estimate(
    model: ModelEntry,
    gpu: GpuType,
    gpus: int,
    quantization: str,
    utilization: float,
    max_seqs: int,
    kv_cache_dtype: str = "auto",
    tensor_parallel: int | None = None,
) -> MemoryEstimate:
    return MemoryEstimate(
        weights=weight_bytes(model, quantization),
        overhead=overhead_bytes(model, gpus, max_seqs),
        kv_per_token=kv_bytes_per_token(model, kv_cache_dtype, tensor_parallel or gpus),
        budget=utilization * gpu.memory_gi_b * GIB * gpus,
    )


def prefill_seconds(model: ModelEntry, gpu: GpuType, gpus: int, tokens: float) -> float:
    """Time to prefill ``tokens`` prompt tokens (compute-bound, active parameters)."""
    flops = 2.0 * model.active_params * tokens
    return flops / (gpu.bf16_tflops * 1e12 * gpus * MFU)


def decode_step_seconds(weights: float, live_kv_bytes: float, gpu: GpuType, gpus: int) -> float:
    """One decode iteration: read the weights and the live KV cache once."""
    return STEP_OVERHEAD_S + (weights + live_kv_bytes) / (gpu.bandwidth_g_bs * 1e9 * gpus * MBU)


def decode_tokens_per_second(
    model: ModelEntry,
    gpu: GpuType,
    gpus: int,
    quantization: str,
    batch: int,
    context_tokens: float,
    kv_cache_dtype: str = "auto",
    tensor_parallel: int | None = None,
) -> float:
    """Output tokens per second of a replica decoding ``batch`` sequences of
    ``context_tokens`` average length, on ``gpus`` GPUs split ``tensor_parallel`` ways
    (the rest pipeline stages; default: all tensor parallel)."""
    tensor_parallel = tensor_parallel or gpus
    if batch <= 0:
        return 0.0
    live = batch * context_tokens * kv_bytes_per_token(model, kv_cache_dtype, tensor_parallel)
    step = decode_step_seconds(weight_bytes_read(model, quantization, batch), live, gpu, gpus)
    return batch / step
