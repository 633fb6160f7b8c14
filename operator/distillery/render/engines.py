"""Per-engine command lines, ports, probes and metrics: one place per engine.

Each builder turns the same inputs (where the model is, the placement, the serving
limits) into the engine's own flags. They are plain functions so each is tested on its
own; the templates only lay the result out. Arguments are lists handed to the container
runtime as argv (no shell), so nothing a user writes is ever interpreted by a shell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from distillery.render.source import ModelSource

PORT = 8000


@dataclass(frozen=True)
class EngineInputs:
    """What every engine needs to know to start."""

    source: ModelSource
    served_name: str
    revision: str
    tensor_parallel: int
    gpus: int  # 0 on CPU-only nodes
    quantization: str  # none | fp8 | int8 | awq | gptq
    max_model_len: int
    max_concurrency: int
    gpu_memory_utilization: float
    kv_cache_dtype: str  # auto | fp8
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineLaunch:
    """The container's command line and how to probe and scrape it."""

    command: list[str]
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = PORT
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    run_as_non_root: bool = False


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def vllm(i: EngineInputs) -> EngineLaunch:
    args = [
        i.source.engine_model_arg,
        "--served-model-name", i.served_name,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--tensor-parallel-size", str(i.tensor_parallel),
        "--max-model-len", str(i.max_model_len),
        "--gpu-memory-utilization", _fmt(i.gpu_memory_utilization),
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


def sglang(i: EngineInputs) -> EngineLaunch:
    args = [
        "--model-path", i.source.engine_model_arg,
        "--served-model-name", i.served_name,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--tp", str(i.tensor_parallel),
        "--context-length", str(i.max_model_len),
        "--mem-fraction-static", _fmt(i.gpu_memory_utilization),
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


def tgi(i: EngineInputs) -> EngineLaunch:
    args = [
        "--model-id", i.source.engine_model_arg,
        "--hostname", "0.0.0.0",
        "--port", str(PORT),
        "--num-shard", str(i.tensor_parallel),
        "--max-total-tokens", str(i.max_model_len),
        "--max-input-tokens", str(i.max_model_len - 1),
        "--max-concurrent-requests", str(i.max_concurrency),
        "--cuda-memory-fraction", _fmt(i.gpu_memory_utilization),
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


def llamacpp(i: EngineInputs) -> EngineLaunch:
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
    return EngineLaunch(
        command=["/app/llama-server"],
        args=args + list(i.extra_args),
        env={"LLAMA_CACHE": "/models/llama.cpp"},
        run_as_non_root=True,
    )


BUILDERS: dict[str, Callable[[EngineInputs], EngineLaunch]] = {
    "vllm": vllm,
    "sglang": sglang,
    "tgi": tgi,
    "llamacpp": llamacpp,
}


def launch(engine: str, inputs: EngineInputs) -> EngineLaunch:
    return BUILDERS[engine](inputs)
