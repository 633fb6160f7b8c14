"""vLLM: the OpenAI-compatible server, its flags and its ``vllm:`` metrics."""

from __future__ import annotations

from distillery.engines import model as m
from distillery.engines.model import PORT, EngineInputs, EngineLaunch

# The release the image, the flags and the metric contract are pinned to
# (tests/data/vllm-metrics.json lists its /metrics, with the sources cited).
VERSION = "v0.18.1"
# vllm:time_to_first_token_seconds's boundaries (vllm/v1/metrics/loggers.py): fixed,
# with nothing between 1.0 and 2.5 s.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TTFT = "vllm:time_to_first_token_seconds"
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
_INFERENCE_ROUTES = 'handler=~"/v1/completions|/v1/chat/completions"'


def launch(i: EngineInputs) -> EngineLaunch:
    args = [
        i.source.engine_model_arg,
        "--served-model-name", i.served_name,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--tensor-parallel-size", str(i.tensor_parallel),
        "--max-model-len", str(i.max_model_len),
        "--gpu-memory-utilization", m.fmt_fraction(i.gpu_memory_utilization),
        "--max-num-seqs", str(i.max_concurrency),
    ]  # fmt: skip
    if i.pipeline_parallel > 1:
        args += ["--pipeline-parallel-size", str(i.pipeline_parallel)]
    args += m.hub_revision(i)
    if i.quantization in ("fp8", "awq", "gptq"):
        args += ["--quantization", i.quantization]
    # int8 checkpoints (compressed-tensors W8A8) are detected from their config.
    if i.kv_cache_dtype == "fp8":
        args += ["--kv-cache-dtype", "fp8"]
    if i.expert_parallel:
        args += ["--enable-expert-parallel"]
    # Multiprocessing across nodes (no Ray): every node runs `vllm serve` with the same
    # parallel layout; rank 0 serves the API, the others run headless.
    return m.serve(
        i,
        ["vllm", "serve"],
        args,
        {"HF_HOME": "/models/hf", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
        group=["--nnodes", str(i.nodes), "--master-addr", m.LWS_LEADER_ADDRESS],
        worker_only=["--headless"],
    )


ENGINE = m.ServingEngine(
    name="vllm",
    launch=launch,
    image=f"vllm/vllm-openai:{VERSION}",
    quantizations=frozenset({"none", "fp8", "int8", "awq", "gptq"}),
    online_fp8=True,
    multi_node="pipeline",
    expert_parallel=True,
    start_seconds=90.0,
    picker=m.PickerMetrics(
        queued="vllm:num_requests_waiting",
        kv_cache_usage="vllm:kv_cache_usage_perc",
        lora_info="vllm:lora_requests_info",
    ),
    queries=m.EngineQueries.from_metrics(
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        # Older vLLM releases export gpu_cache_usage_perc instead.
        kv_usage='{__name__=~"vllm:kv_cache_usage_perc|vllm:gpu_cache_usage_perc"}',
        prompt_tokens="vllm:prompt_tokens_total",
        ttft_histogram=TTFT,
        # Finished requests of every finished_reason (stop, length, abort, ...).
        completions="vllm:request_success_total",
        generation_tokens="vllm:generation_tokens_total",
        # prompt_tokens_total counts prefix-cache hits; current vLLM splits it by source.
        computed_prompt_tokens='vllm:prompt_tokens_by_source_total{source="local_compute"}',
    ),
    # request_success_total counts requests the engine finished (stop, length, abort,
    # error, repetition), never an HTTP error: a request that fails before or outside
    # the engine is not in it. Failures are the API server's HTTP 5xx responses on the
    # inference routes (prometheus-fastapi-instrumentator, status grouped as "5xx").
    analysis=m.AnalysisQueries.of_histogram(
        TTFT,
        requests=("vllm:request_success_total", ""),
        failures=("http_requests_total", f'{_INFERENCE_ROUTES},status="5xx"'),
        responses=("http_requests_total", _INFERENCE_ROUTES),
        failure_signal="HTTP 5xx responses on /v1/completions and /v1/chat/completions "
        "(http_requests_total)",
    ),
    ttft_boundaries=TTFT_BUCKETS,
)
