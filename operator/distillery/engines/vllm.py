"""vLLM: the OpenAI-compatible server, its flags and its ``vllm:`` metrics."""

from __future__ import annotations

from distillery.engines.model import (
    PORT,
    AnalysisQueries,
    EngineInputs,
    EngineLaunch,
    EngineQueries,
    ServingEngine,
    fmt_fraction,
)
from distillery.engines.model import promql_by_pod as q


def launch(i: EngineInputs) -> EngineLaunch:
    args = [
        i.source.engine_model_arg,
        "--served-model-name", i.served_name,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--tensor-parallel-size", str(i.tensor_parallel),
        "--max-model-len", str(i.max_model_len),
        "--gpu-memory-utilization", fmt_fraction(i.gpu_memory_utilization),
        "--max-num-seqs", str(i.max_concurrency),
    ]  # fmt: skip
    if i.source.scheme == "hf":
        args += ["--revision", i.revision]
    if i.quantization in ("fp8", "awq", "gptq"):
        args += ["--quantization", i.quantization]
    # int8 checkpoints (compressed-tensors W8A8) are detected from their config.
    if i.kv_cache_dtype == "fp8":
        args += ["--kv-cache-dtype", "fp8"]
    return EngineLaunch(
        command=["vllm", "serve"],
        args=args + list(i.extra_args),
        env={"HF_HOME": "/models/hf", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
    )


ENGINE = ServingEngine(
    name="vllm",
    launch=launch,
    image="vllm/vllm-openai:v0.11.0",
    quantizations=frozenset({"none", "fp8", "int8", "awq", "gptq"}),
    online_fp8=True,
    start_seconds=90.0,
    queries=EngineQueries(
        running=q("vllm:num_requests_running"),
        waiting=q("vllm:num_requests_waiting"),
        # Older vLLM releases export gpu_cache_usage_perc instead.
        kv_usage=q('{__name__=~"vllm:kv_cache_usage_perc|vllm:gpu_cache_usage_perc"}', "avg"),
        prompt_tokens_rate=q("rate(vllm:prompt_tokens_total[1m])"),
        ttft_buckets="sum by (namespace, pod, le) "
        "(rate(vllm:time_to_first_token_seconds_bucket[1m]))",
        freshness=q("timestamp(vllm:num_requests_running)", "max"),
        # Finished requests of every finished_reason (stop, length, abort, ...).
        completions_rate=q("rate(vllm:request_success_total[1m])"),
        generation_tokens_rate=q("rate(vllm:generation_tokens_total[1m])"),
        # prompt_tokens_total counts prefix-cache hits; current vLLM splits it by source.
        computed_prompt_tokens_rate=q(
            'rate(vllm:prompt_tokens_by_source_total{source="local_compute"}[1m])'
        ),
    ),
    # vLLM counts every finished request by finished_reason; aborted ones (engine errors,
    # timeouts, dropped connections) are the failures it exports.
    analysis=AnalysisQueries(
        requests=("vllm:request_success_total", ""),
        failures=("vllm:request_success_total", 'finished_reason=~"abort|error"'),
        ttft_buckets=("vllm:time_to_first_token_seconds_bucket", ""),
    ),
)
