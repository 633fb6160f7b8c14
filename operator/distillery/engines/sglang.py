"""SGLang: its launcher's flags and its ``sglang:`` metrics."""

from __future__ import annotations

from distillery.engines import model as m
from distillery.engines.model import PORT, EngineInputs, EngineLaunch

# sglang:time_to_first_token_seconds's default boundaries (sglang/srt/metrics/
# collector.py); --bucket-time-to-first-token replaces them.
TTFT_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0,
    100.0, 200.0, 400.0,
)  # fmt: skip


TTFT = "sglang:time_to_first_token_seconds"
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
        "--mem-fraction-static", m.fmt_fraction(i.gpu_memory_utilization),
        "--max-running-requests", str(i.max_concurrency),
        "--enable-metrics",
    ]  # fmt: skip
    args += m.hub_revision(i)
    if i.quantization in ("fp8", "awq", "gptq"):
        args += ["--quantization", i.quantization]
    elif i.quantization == "int8":
        args += ["--quantization", "w8a8_int8"]
    if i.kv_cache_dtype == "fp8":
        args += ["--kv-cache-dtype", "fp8_e5m2"]
    if i.slo_ttft_seconds is not None and BUCKET_FLAG not in i.extra_args:
        args += m.ttft_bucket_args(BUCKET_FLAG, TTFT_BUCKETS, i.slo_ttft_seconds)
    if i.expert_parallel:
        # Expert parallelism over the tensor-parallel group (it shares that group).
        args += ["--ep-size", str(i.tensor_parallel)]
    # Across nodes: one tensor-parallel group over every node's GPUs.
    return m.serve(
        i,
        ["python3", "-m", "sglang.launch_server"],
        args,
        {"HF_HOME": "/models/hf"},
        group=["--nnodes", str(i.nodes), "--dist-init-addr", f"{m.LWS_LEADER_ADDRESS}:{DIST_PORT}"],
    )


ENGINE = m.ServingEngine(
    name="sglang",
    launch=launch,
    image="lmsysorg/sglang:v0.5.3-cu126",
    quantizations=frozenset({"none", "fp8", "int8", "awq", "gptq"}),
    online_fp8=True,
    multi_node="tensor",
    expert_parallel=True,
    start_seconds=75.0,
    picker=m.PickerMetrics(queued="sglang:num_queue_reqs", kv_cache_usage="sglang:token_usage"),
    queries=m.EngineQueries.from_metrics(
        running="sglang:num_running_reqs",
        waiting="sglang:num_queue_reqs",
        kv_usage="sglang:token_usage",
        prompt_tokens="sglang:prompt_tokens_total",
        ttft_histogram=TTFT,
        completions="sglang:num_requests_total",
        generation_tokens="sglang:generation_tokens_total",
    ),
    # SGLang counts aborted requests (client disconnects among them) but no HTTP
    # errors: a canary's failures are not visible in its metrics.
    analysis=m.AnalysisQueries.of_histogram(
        TTFT, requests=("sglang:num_requests_total", ""), failures=None
    ),
    ttft_boundaries=TTFT_BUCKETS,
    ttft_bucket_flag=BUCKET_FLAG,
)
