"""What distillery knows about a serving engine, as one record (pure).

A :class:`ServingEngine` holds everything engine-specific: how to start it (argv, port,
probes), the image, the quantizations it serves, how long it takes to start once the
weights are in memory, and the PromQL for its load and latency metrics. Each engine is
one module of this package; :mod:`distillery.engines.registry` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from distillery.engines.source import ModelSource

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
    # The TTFT SLO, for engines whose histogram boundaries can be set to include it.
    slo_ttft_seconds: float | None = None
    # A replica across nodes: how many, and the pipeline stages (tensor_parallel x
    # pipeline_parallel = gpus). One node: 1 and 1.
    nodes: int = 1
    pipeline_parallel: int = 1
    # Shard a mixture of experts' experts across the GPUs instead of splitting each.
    expert_parallel: bool = False


@dataclass(frozen=True)
class EngineLaunch:
    """The container's command line and how to probe and scrape it."""

    command: list[str]
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # A multi-node replica: the arguments of the worker pods (the leader runs ``args``
    # and serves the API); None on one node.
    worker_args: list[str] | None = None
    port: int = PORT
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    run_as_non_root: bool = False


@dataclass(frozen=True)
class EngineQueries:
    """PromQL for the autoscaler, each summed (or averaged) by namespace and pod."""

    running: str
    waiting: str
    kv_usage: str | None
    prompt_tokens_rate: str | None
    ttft_buckets: str | None
    freshness: str
    completions_rate: str | None = None
    generation_tokens_rate: str | None = None
    # Prompt tokens the engine computed (prefix-cache hits excluded), where it says so.
    computed_prompt_tokens_rate: str | None = None
    # Rate of the TTFT histogram's _sum: bounds the latency inside a coarse bucket.
    ttft_sum: str | None = None

    @classmethod
    def from_metrics(
        cls,
        *,
        running: str,
        waiting: str,
        kv_usage: str | None,
        prompt_tokens: str | None,
        ttft_histogram: str | None,
        completions: str | None = None,
        generation_tokens: str | None = None,
        computed_prompt_tokens: str | None = None,
        freshness_of: str | None = None,
    ) -> EngineQueries:
        """The queries from the engine's metric names: gauges per pod, counters as
        one-minute rates, the histogram's buckets and sum; freshness is the newest
        sample of ``freshness_of`` (default: ``running``)."""
        return cls(
            running=promql_by_pod(running),
            waiting=promql_by_pod(waiting),
            kv_usage=promql_by_pod(kv_usage, "avg") if kv_usage else None,
            prompt_tokens_rate=_rate(prompt_tokens),
            ttft_buckets=f"sum by (namespace, pod, le) (rate({ttft_histogram}_bucket[1m]))"
            if ttft_histogram
            else None,
            freshness=promql_by_pod(f"timestamp({freshness_of or running})", "max"),
            completions_rate=_rate(completions),
            generation_tokens_rate=_rate(generation_tokens),
            computed_prompt_tokens_rate=_rate(computed_prompt_tokens),
            ttft_sum=_rate(f"{ttft_histogram}_sum") if ttft_histogram else None,
        )


def _rate(counter: str | None) -> str | None:
    return promql_by_pod(f"rate({counter}[1m])") if counter else None


@dataclass(frozen=True, kw_only=True)
class AnalysisQueries:
    """Counters a canary analysis compares between tracks: (metric, extra matchers)."""

    # Finished requests: whether a track served enough to judge.
    requests: tuple[str, str] | None
    # Failed responses, counted among ``responses`` (None: among ``requests``).
    failures: tuple[str, str] | None
    responses: tuple[str, str] | None = None
    # What ``failures`` counts, for the verdict and the docs.
    failure_signal: str = "no failure counter"
    ttft_buckets: tuple[str, str] | None
    ttft_sum: tuple[str, str] | None = None

    @classmethod
    def of_histogram(
        cls,
        ttft_histogram: str | None,
        *,
        requests: tuple[str, str] | None,
        failures: tuple[str, str] | None,
        responses: tuple[str, str] | None = None,
        failure_signal: str = "no failure counter",
    ) -> AnalysisQueries:
        """The counters, and the TTFT histogram's buckets and sum by its name."""
        return cls(
            requests=requests,
            failures=failures,
            responses=responses,
            failure_signal=failure_signal,
            ttft_buckets=(f"{ttft_histogram}_bucket", "") if ttft_histogram else None,
            ttft_sum=(f"{ttft_histogram}_sum", "") if ttft_histogram else None,
        )


@dataclass(frozen=True, kw_only=True)
class PickerMetrics:
    """The metrics the Gateway API Inference Extension's endpoint picker scrapes from
    each pod to pick one (its ``--*-metric`` flags, in its ``name{label=value}`` form);
    "" turns one off, as for an engine that does not export it."""

    queued: str
    kv_cache_usage: str = ""
    lora_info: str = ""

    def flags(self) -> list[str]:
        return [
            "--total-queued-requests-metric", self.queued,
            "--kv-cache-usage-percentage-metric", self.kv_cache_usage,
            "--lora-info-metric", self.lora_info,
        ]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ServingEngine:
    """One engine: everything distillery does differently for it."""

    name: str
    launch: Callable[[EngineInputs], EngineLaunch]
    image: str
    # The image for CPU-only nodes; None: the engine needs a GPU.
    cpu_image: str | None = None
    quantizations: frozenset[str]
    # Quantizes a bf16 checkpoint to fp8 at load time.
    online_fp8: bool
    # Start after the weights are in memory: CUDA graphs, compilation, KV profiling.
    start_seconds: float
    queries: EngineQueries
    analysis: AnalysisQueries
    picker: PickerMetrics
    # The TTFT histogram's finite bucket boundaries as the engine exports them by
    # default; None: no TTFT histogram. An SLO between two of them is measured as a range.
    ttft_boundaries: tuple[float, ...] | None = None
    # The flag that sets the TTFT buckets, where the engine has one: its launch then
    # puts the SLO on a boundary (:func:`ttft_bucket_args`). None: fixed buckets.
    ttft_bucket_flag: str | None = None
    # How a replica spans nodes, where the engine can: "pipeline" (tensor parallel within
    # a node, pipeline stages across nodes) or "tensor" (one tensor-parallel group over
    # every GPU). None: one node only.
    multi_node: str | None = None
    # Serves a mixture of experts with expert parallelism (the experts sharded by GPU).
    expert_parallel: bool = False


# Environment variables the LeaderWorkerSet controller sets in every pod of a group:
# the leader pod's address and the pod's index in the group (0: the leader).
LWS_LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
LWS_WORKER_INDEX = "$(LWS_WORKER_INDEX)"


def hub_revision(i: EngineInputs) -> list[str]:
    """``--revision`` for a model the engine downloads from the Hub itself (a model on a
    volume or fetched by the init container is already the pinned revision)."""
    return ["--revision", i.revision] if i.source.scheme == "hf" else []


def serve(
    i: EngineInputs,
    command: list[str],
    args: list[str],
    env: dict[str, str],
    *,
    group: Sequence[str] = (),
    worker_only: Sequence[str] = (),
    run_as_non_root: bool = False,
) -> EngineLaunch:
    """The launch with the user's extra arguments last. On more than one node, ``group``
    (where the ranks meet) goes to every pod: rank 0 is the leader and serves the API,
    the workers take their rank from the LeaderWorkerSet and ``worker_only``. An engine
    without a ``group`` runs on one node."""
    extra = list(i.extra_args)
    if i.nodes <= 1 or not group:
        return EngineLaunch(command, [*args, *extra], env, run_as_non_root=run_as_non_root)
    return EngineLaunch(
        command,
        [*args, *group, "--node-rank", "0", *extra],
        env,
        worker_args=[*args, *group, "--node-rank", LWS_WORKER_INDEX, *worker_only, *extra],
        run_as_non_root=run_as_non_root,
    )


def ttft_bucket_args(flag: str, defaults: Sequence[float], slo_seconds: float) -> list[str]:
    """``flag`` with the default boundaries plus the SLO, so attainment is measured
    exactly; nothing when the SLO is one of them already."""
    slo = round(slo_seconds, 3)
    if slo in defaults:
        return []
    return [flag, *(f"{b:g}" for b in sorted({*defaults, slo}))]


def user_bucket_boundaries(flag: str, extra_args: Sequence[str]) -> list[float] | None:
    """The boundaries a user set with ``flag`` in ``serving.extraArgs``; None: not set."""
    if flag not in extra_args:
        return None
    out: list[float] = []
    for arg in extra_args[list(extra_args).index(flag) + 1 :]:
        try:
            out.append(float(arg))
        except ValueError:
            break
    return out


def promql_by_pod(metric: str, agg: str = "sum") -> str:
    """``agg by (namespace, pod) (metric)``: one series per pod, for every DMD at once."""
    return f"{agg} by (namespace, pod) ({metric})"


def fmt_fraction(x: float) -> str:
    """0.9 -> "0.9", 0.85 -> "0.85": how engines take a memory fraction."""
    return f"{x:.2f}".rstrip("0").rstrip(".")
