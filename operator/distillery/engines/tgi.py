"""Text Generation Inference: its launcher's flags and its ``tgi_`` metrics (no TTFT)."""

from __future__ import annotations

from distillery.engines import model as m
from distillery.engines.model import PORT, EngineInputs, EngineLaunch


def launch(i: EngineInputs) -> EngineLaunch:
    args = [
        "--model-id", i.source.engine_model_arg,
        "--hostname", "0.0.0.0",
        "--port", str(PORT),
        "--num-shard", str(i.tensor_parallel),
        "--max-total-tokens", str(i.max_model_len),
        "--max-input-tokens", str(i.max_model_len - 1),
        "--max-concurrent-requests", str(i.max_concurrency),
        "--cuda-memory-fraction", m.fmt_fraction(i.gpu_memory_utilization),
    ]  # fmt: skip
    args += m.hub_revision(i)
    if i.quantization in ("fp8", "awq", "gptq"):
        args += ["--quantize", i.quantization]
    if i.kv_cache_dtype == "fp8":
        args += ["--kv-cache-dtype", "fp8_e5m2"]
    return m.serve(
        i,
        ["text-generation-launcher"],
        args,
        {"HF_HOME": "/models/hf", "HUGGINGFACE_HUB_CACHE": "/models/hf"},
    )


ENGINE = m.ServingEngine(
    name="tgi",
    launch=launch,
    image="ghcr.io/huggingface/text-generation-inference:3.3.6",
    quantizations=frozenset({"none", "fp8", "awq", "gptq"}),
    online_fp8=True,
    start_seconds=60.0,
    # TGI exports no KV-cache usage: the picker scores its pods by queue alone.
    picker=m.PickerMetrics(queued="tgi_queue_size"),
    queries=m.EngineQueries.from_metrics(
        running="tgi_batch_current_size",
        waiting="tgi_queue_size",
        kv_usage=None,
        prompt_tokens="tgi_request_input_length_sum",
        ttft_histogram=None,  # TGI exports no time to first token
        completions="tgi_request_success",
        generation_tokens="tgi_request_generated_tokens_sum",
        freshness_of="tgi_queue_size",
    ),
    # The router counts every request and every failure (validation, generation,
    # overloaded, ...) in tgi_request_failure{err}.
    analysis=m.AnalysisQueries.of_histogram(
        None,
        requests=("tgi_request_count", ""),
        failures=("tgi_request_failure", ""),
        failure_signal="failed requests (tgi_request_failure)",
    ),
)
