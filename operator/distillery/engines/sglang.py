"""SGLang: its launcher's flags and its ``sglang:`` metrics."""

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
        "--model-path", i.source.engine_model_arg,
        "--served-model-name", i.served_name,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--tp", str(i.tensor_parallel),
        "--context-length", str(i.max_model_len),
        "--mem-fraction-static", fmt_fraction(i.gpu_memory_utilization),
        "--max-running-requests", str(i.max_concurrency),
        "--enable-metrics",
    ]  # fmt: skip
    if i.source.scheme == "hf":
        args += ["--revision", i.revision]
    if i.quantization in ("fp8", "awq", "gptq"):
        args += ["--quantization", i.quantization]
    elif i.quantization == "int8":
        args += ["--quantization", "w8a8_int8"]
    if i.kv_cache_dtype == "fp8":
        args += ["--kv-cache-dtype", "fp8_e5m2"]
    return EngineLaunch(
        command=["python3", "-m", "sglang.launch_server"],
        args=args + list(i.extra_args),
        env={"HF_HOME": "/models/hf"},
    )


ENGINE = ServingEngine(
    name="sglang",
    launch=launch,
    image="lmsysorg/sglang:v0.5.3-cu126",
    quantizations=frozenset({"none", "fp8", "int8", "awq", "gptq"}),
    online_fp8=True,
    start_seconds=75.0,
    queries=EngineQueries(
        running=q("sglang:num_running_reqs"),
        waiting=q("sglang:num_queue_reqs"),
        kv_usage=q("sglang:token_usage", "avg"),
        prompt_tokens_rate=q("rate(sglang:prompt_tokens_total[1m])"),
        ttft_buckets="sum by (namespace, pod, le) "
        "(rate(sglang:time_to_first_token_seconds_bucket[1m]))",
        freshness=q("timestamp(sglang:num_running_reqs)", "max"),
        completions_rate=q("rate(sglang:num_requests_total[1m])"),
        generation_tokens_rate=q("rate(sglang:generation_tokens_total[1m])"),
    ),
    analysis=AnalysisQueries(
        requests=("sglang:num_requests_total", ""),
        failures=None,
        ttft_buckets=("sglang:time_to_first_token_seconds_bucket", ""),
    ),
)
