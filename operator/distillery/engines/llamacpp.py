"""llama.cpp's server: GGUF on GPUs or CPU-only nodes, and its ``llamacpp:`` metrics."""

from __future__ import annotations

from distillery.engines import model as m
from distillery.engines.model import PORT, EngineInputs, EngineLaunch


def launch(i: EngineInputs) -> EngineLaunch:
    # llama.cpp splits its context across slots: -c is the total over --parallel slots.
    args = [
        *i.source.llamacpp_model_args,
        "--alias", i.served_name,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--ctx-size", str(i.max_model_len * i.max_concurrency),
        "--parallel", str(i.max_concurrency),
        "--n-gpu-layers", "999" if i.gpus else "0",
        "--metrics",
    ]  # fmt: skip
    if i.kv_cache_dtype == "fp8":
        args += ["--cache-type-k", "q8_0", "--cache-type-v", "q8_0"]
    return m.serve(
        i, ["/app/llama-server"], args, {"LLAMA_CACHE": "/models/llama.cpp"}, run_as_non_root=True
    )


ENGINE = m.ServingEngine(
    name="llamacpp",
    launch=launch,
    image="ghcr.io/ggml-org/llama.cpp:server-cuda-b6700",
    cpu_image="ghcr.io/ggml-org/llama.cpp:server-b6700",
    quantizations=frozenset({"none", "int8"}),
    online_fp8=False,
    # llama.cpp maps the file: no graph capture or profiling.
    start_seconds=10.0,
    picker=m.PickerMetrics(
        queued="llamacpp:requests_deferred", kv_cache_usage="llamacpp:kv_cache_usage_ratio"
    ),
    queries=m.EngineQueries.from_metrics(
        running="llamacpp:requests_processing",
        waiting="llamacpp:requests_deferred",
        kv_usage="llamacpp:kv_cache_usage_ratio",
        prompt_tokens="llamacpp:prompt_tokens_total",
        ttft_histogram=None,
        generation_tokens="llamacpp:tokens_predicted_total",
    ),
    analysis=m.AnalysisQueries.of_histogram(None, requests=None, failures=None),
)
