"""vLLM's ``/metrics`` as the emulators serve it (pure).

The local fleet (``hack/fleet.py``) and the integration tests' exporter stand in for
vLLM pods. If they exported friendlier metrics than vLLM does (finer TTFT buckets, a
failure count in ``request_success_total``), every query and rule tested against them
would be tested against a fiction. So both write through this one function, and
``tests/unit/test_exposition.py`` holds its output to the metric list of the pinned
vLLM release (``tests/data/vllm-metrics.json``): names, types, label names, buckets.

What vLLM exports, and so what is written here:

- ``vllm:request_success_total{finished_reason}`` counts requests the engine finished,
  by reason (every reason present from the start, at 0); an HTTP error never reaches it.
- ``http_requests_total{handler,method,status}``: the API server's responses, status
  grouped ("2xx", "5xx"): the only place a failed request shows.
- ``vllm:prompt_tokens_total`` counts prefix-cache hits;
  ``vllm:prompt_tokens_by_source_total{source}`` splits them from computed tokens.
- ``vllm:time_to_first_token_seconds`` with vLLM's fixed boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from distillery.engines import vllm

ENGINE_INDEX = "0"
INFERENCE_HANDLER = "/v1/chat/completions"


@dataclass(frozen=True)
class VllmPod:
    """One pod's metric values (counters as totals since start)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    prompt_tokens: float = 0.0  # cache hits included
    computed_prompt_tokens: float | None = None  # None: every prompt token computed
    generation_tokens: float = 0.0
    # finished_reason -> requests; reasons not given are exported at 0.
    finished: Mapping[str, float] = field(default_factory=dict)
    # Count per TTFT bucket of vllm.TTFT_BUCKETS, plus a last one above them all.
    ttft_counts: Sequence[float] = ()
    ttft_sum: float = 0.0
    # HTTP status group ("2xx", "4xx", "5xx") -> responses on the inference handler.
    responses: Mapping[str, float] = field(default_factory=dict)


def _fmt(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"


def _labels(base: Mapping[str, str], **extra: str) -> str:
    items = {**base, **extra}
    return ",".join(f'{k}="{v}"' for k, v in items.items())


def exposition(pods: Iterable[tuple[Mapping[str, str], VllmPod]], model_name: str) -> str:
    """Text format 0.0.4 for ``pods``, each with the target labels a scrape would attach
    (empty for a real one-pod endpoint; namespace and pod for an exporter that speaks
    for many with ``honor_labels``)."""
    pods = list(pods)
    lines: list[str] = []

    # prometheus_client names a counter's family with its _total suffix in 0.0.4 text.
    def family(name: str, kind: str, help_: str, samples: Iterable[str]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)

    def base(target: Mapping[str, str]) -> dict[str, str]:
        return {**target, "model_name": model_name, "engine": ENGINE_INDEX}

    for name, attr, help_ in (
        ("vllm:num_requests_running", "running", "Number of requests in model execution batches."),
        ("vllm:num_requests_waiting", "waiting", "Number of requests waiting to be processed."),
        ("vllm:kv_cache_usage_perc", "kv_usage", "KV-cache usage. 1 means 100 percent usage."),
    ):
        family(
            name,
            "gauge",
            help_,
            (f"{name}{{{_labels(base(t))}}} {_fmt(getattr(p, attr))}" for t, p in pods),
        )
    for name, attr, help_ in (
        ("vllm:prompt_tokens", "prompt_tokens", "Number of prefill tokens processed."),
        ("vllm:generation_tokens", "generation_tokens", "Number of generation tokens processed."),
    ):
        family(
            f"{name}_total",
            "counter",
            help_,
            (f"{name}_total{{{_labels(base(t))}}} {_fmt(getattr(p, attr))}" for t, p in pods),
        )

    def by_source(t: Mapping[str, str], p: VllmPod) -> Iterable[str]:
        computed = p.prompt_tokens if p.computed_prompt_tokens is None else p.computed_prompt_tokens
        for source, value in (
            ("local_compute", computed),
            ("local_cache_hit", p.prompt_tokens - computed),
            ("external_kv_transfer", 0.0),
        ):
            yield (
                f"vllm:prompt_tokens_by_source_total{{{_labels(base(t), source=source)}}} "
                f"{_fmt(value)}"
            )

    family(
        "vllm:prompt_tokens_by_source_total",
        "counter",
        "Number of prompt tokens by source.",
        (line for t, p in pods for line in by_source(t, p)),
    )
    family(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        (
            f"vllm:request_success_total{{{_labels(base(t), finished_reason=r)}}} "
            f"{_fmt(p.finished.get(r, 0.0))}"
            for t, p in pods
            for r in vllm.FINISHED_REASONS
        ),
    )

    def histogram(t: Mapping[str, str], p: VllmPod) -> Iterable[str]:
        counts = list(p.ttft_counts) or [0.0] * (len(vllm.TTFT_BUCKETS) + 1)
        if len(counts) != len(vllm.TTFT_BUCKETS) + 1:
            raise ValueError(f"{len(counts)} TTFT counts for {len(vllm.TTFT_BUCKETS) + 1} buckets")
        acc = 0.0
        name = "vllm:time_to_first_token_seconds"
        for le, n in zip((*vllm.TTFT_BUCKETS, math.inf), counts, strict=True):
            acc += n
            le_s = "+Inf" if math.isinf(le) else repr(float(le))
            yield f"{name}_bucket{{{_labels(base(t), le=le_s)}}} {_fmt(acc)}"
        yield f"{name}_count{{{_labels(base(t))}}} {_fmt(acc)}"
        yield f"{name}_sum{{{_labels(base(t))}}} {_fmt(p.ttft_sum)}"

    family(
        "vllm:time_to_first_token_seconds",
        "histogram",
        "Histogram of time to first token in seconds.",
        (line for t, p in pods for line in histogram(t, p)),
    )
    route = {"handler": INFERENCE_HANDLER, "method": "POST"}
    family(
        "http_requests_total",
        "counter",
        "Total number of requests by method, status and handler.",
        (
            f"http_requests_total{{{_labels(t, **route, status=s)}}} {_fmt(n)}"
            for t, p in pods
            for s, n in sorted(p.responses.items())
        ),
    )
    return "\n".join(lines) + "\n"
