"""Can this DMD's TTFT SLO be measured exactly from its engine's histogram (pure)?

vLLM's TTFT buckets are fixed, with nothing between 1.0 and 2.5 s: a 2 s SLO is read as
a range (surely within 1.0 s, possibly within 2.5 s), tightened by the histogram's
``_sum`` (:mod:`distillery.autoscale.histogram`). Users should know that before they
rely on the TTFT guard or a canary's SLO check, and how to get an exact reading: this
is the ``SLOMeasurable`` condition and the line ``distillery plan`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distillery.api.types import DistilledModelDeploymentSpec
from distillery.autoscale.histogram import slo_resolution
from distillery.engines import ENGINES
from distillery.engines.model import ttft_bucket_args, user_bucket_boundaries

ENGINE_NAMES = {"vllm": "vLLM", "sglang": "SGLang", "tgi": "TGI", "llamacpp": "llama.cpp"}


@dataclass(frozen=True)
class SloMeasurement:
    exact: bool
    reason: str
    message: str


def _seconds(x: float) -> str:
    return f"{x:g} s"


def slo_measurement(
    engine: str, slo_seconds: float, extra_args: Sequence[str] = ()
) -> SloMeasurement:
    """How exactly ``engine``'s TTFT histogram measures an SLO of ``slo_seconds``."""
    record = ENGINES[engine]
    name = ENGINE_NAMES.get(engine, engine)
    slo = _seconds(slo_seconds)
    if record.ttft_boundaries is None:
        return SloMeasurement(
            False,
            "NoHistogram",
            f"{name} exports no time-to-first-token histogram: the TTFT guard and the "
            "canary's latency checks are off; scaling follows load alone",
        )
    on_boundary = SloMeasurement(
        True, "OnBoundary", f"{name}'s TTFT histogram has a boundary at the {slo} SLO"
    )
    boundaries: Sequence[float] = record.ttft_boundaries
    flag = record.ttft_bucket_flag
    if flag is not None:
        user = user_bucket_boundaries(flag, extra_args)
        # The same decision the engine's launch makes: a boundary added when needed.
        if user is None and ttft_bucket_args(flag, boundaries, slo_seconds):
            return SloMeasurement(
                True,
                "BoundaryAdded",
                f"{name}'s TTFT buckets are rendered with a boundary at the {slo} SLO "
                f"({flag}): attainment is measured exactly",
            )
        boundaries = user or boundaries
    where = slo_resolution(boundaries, slo_seconds)
    if where.exact:
        return on_boundary
    below = _seconds(where.below) if where.below is not None else "0 s"
    above = _seconds(where.above) if where.above is not None else "its last boundary"
    choices = " or ".join(_seconds(b) for b in (where.below, where.above) if b is not None)
    return SloMeasurement(
        False,
        "BetweenBuckets",
        f"{name}'s TTFT histogram has no boundary between {below} and {above}, where the "
        f"{slo} SLO lies: attainment is read as a range (surely within {below}, possibly "
        f"within {above}) narrowed by the histogram's sum, and only proven breaches act; "
        f"set scaling.slo.ttftSeconds to {choices} to measure it exactly",
    )


def spec_slo_measurement(spec: DistilledModelDeploymentSpec) -> SloMeasurement:
    """:func:`slo_measurement` for a DMD's spec: its engine, SLO and extra arguments."""
    return slo_measurement(
        spec.serving.engine, spec.scaling.slo.ttft_seconds, spec.serving.extra_args
    )
