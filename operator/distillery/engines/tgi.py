"""Text Generation Inference: its launcher's flags and its ``tgi_`` metrics (no TTFT)."""

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
        "--model-id", i.source.engine_model_arg,
        "--hostname", "0.0.0.0",
        "--port", str(PORT),
        "--num-shard", str(i.tensor_parallel),
        "--max-total-tokens", str(i.max_model_len),
        "--max-input-tokens", str(i.max_model_len - 1),
        "--max-concurrent-requests", str(i.max_concurrency),
        "--cuda-memory-fraction", fmt_fraction(i.gpu_memory_utilization),
    ]  # fmt: skip
    if i.source.scheme == "hf":
        args += ["--revision", i.revision]
    if i.quantization in ("fp8", "awq", "gptq"):
        args += ["--quantize", i.quantization]
    if i.kv_cache_dtype == "fp8":
        args += ["--kv-cache-dtype", "fp8_e5m2"]
    return EngineLaunch(
        command=["text-generation-launcher"],
        args=args + list(i.extra_args),
        env={"HF_HOME": "/models/hf", "HUGGINGFACE_HUB_CACHE": "/models/hf"},
    )


ENGINE = ServingEngine(
    name="tgi",
    launch=launch,
    image="ghcr.io/huggingface/text-generation-inference:3.3.6",
    quantizations=frozenset({"none", "fp8", "awq", "gptq"}),
    online_fp8=True,
    start_seconds=60.0,
    queries=EngineQueries(
        running=q("tgi_batch_current_size"),
        waiting=q("tgi_queue_size"),
        kv_usage=None,
        prompt_tokens_rate=q("rate(tgi_request_input_length_sum[1m])"),
        ttft_buckets=None,  # TGI exports no time to first token
        freshness=q("timestamp(tgi_queue_size)", "max"),
        completions_rate=q("rate(tgi_request_success[1m])"),
        generation_tokens_rate=q("rate(tgi_request_generated_tokens_sum[1m])"),
    ),
    # The router counts every request and every failure (validation, generation,
    # overloaded, ...) in tgi_request_failure{err}.
    analysis=AnalysisQueries(
        requests=("tgi_request_count", ""),
        failures=("tgi_request_failure", ""),
        failure_signal="failed requests (tgi_request_failure)",
        ttft_buckets=None,
    ),
)
