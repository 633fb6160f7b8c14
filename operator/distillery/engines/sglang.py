"""SGLang: its launcher's flags and its ``sglang:`` metrics."""

from __future__ import annotations

from distillery.engines.model import (
    LWS_LEADER_ADDRESS,
    LWS_WORKER_INDEX,
    PORT,
    AnalysisQueries,
    EngineInputs,
    EngineLaunch,
    EngineQueries,
    ServingEngine,
    fmt_fraction,
    ttft_bucket_args,
)
from distillery.engines.model import promql_by_pod as q

# sglang:time_to_first_token_seconds's default boundaries (sglang/srt/metrics/
# collector.py); --bucket-time-to-first-token replaces them.
TTFT_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0,
    100.0, 200.0, 400.0,
)  # fmt: skip


BUCKET_FLAG = "--bucket-time-to-first-token"
# Where a multi-node group's ranks meet (torch.distributed's store on the leader).
DIST_PORT = 20000


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
    if i.slo_ttft_seconds is not None and BUCKET_FLAG not in i.extra_args:
        args += ttft_bucket_args(BUCKET_FLAG, TTFT_BUCKETS, i.slo_ttft_seconds)
    if i.expert_parallel:
        # Expert parallelism over the tensor-parallel group (it shares that group).
        args += ["--ep-size", str(i.tensor_parallel)]
    worker_args = None
    if i.nodes > 1:
        # One tensor-parallel group over every node's GPUs; rank 0 serves the API.
        group = ["--nnodes", str(i.nodes), "--dist-init-addr", f"{LWS_LEADER_ADDRESS}:{DIST_PORT}"]
        worker_args = [*args, *group, "--node-rank", LWS_WORKER_INDEX, *i.extra_args]
        args += [*group, "--node-rank", "0"]
    return EngineLaunch(
        command=["python3", "-m", "sglang.launch_server"],
        args=args + list(i.extra_args),
        env={"HF_HOME": "/models/hf"},
        worker_args=worker_args,
    )


ENGINE = ServingEngine(
    name="sglang",
    launch=launch,
    image="lmsysorg/sglang:v0.5.3-cu126",
    quantizations=frozenset({"none", "fp8", "int8", "awq", "gptq"}),
    online_fp8=True,
    multi_node="tensor",
    expert_parallel=True,
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
        ttft_sum=q("rate(sglang:time_to_first_token_seconds_sum[1m])"),
    ),
    # SGLang counts aborted requests (client disconnects among them) but no HTTP
    # errors: a canary's failures are not visible in its metrics.
    analysis=AnalysisQueries(
        requests=("sglang:num_requests_total", ""),
        failures=None,
        ttft_buckets=("sglang:time_to_first_token_seconds_bucket", ""),
        ttft_sum=("sglang:time_to_first_token_seconds_sum", ""),
    ),
    ttft_boundaries=TTFT_BUCKETS,
    ttft_bucket_flag=BUCKET_FLAG,
)
