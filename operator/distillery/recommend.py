"""Which distilled model, quantization and GPUs to run, from requirements (pure).

Inputs: quality floors (named benchmarks, or a domain that names them), the expected
load (peak and mean requests per second with typical input and output lengths), the TTFT
SLO, the allowed GPU types and a budget. Every catalog model that has quality scores is
a candidate, at each quantization the planner can place; for each the planner picks the
cheapest GPUs, and the load gives the replicas at peak and at mean from the same
capacity rule the autoscaler uses. Candidates below a floor, over the budget, or that fit
nothing are excluded with the reason. The cheapest at mean load wins; the top few are
replayed in the simulator at peak load to estimate SLO attainment.

Quantized variants lose a stated fraction of their scores (catalog/data/quality.yaml,
overridable): a penalty is never silently zero.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml

from distillery.api.routing import ReasoningRoute
from distillery.api.types import DistilledModelDeploymentSpec
from distillery.autoscale.policy import capacity_for
from distillery.catalog import Catalog, ModelEntry
from distillery.simulate.engine import Scenario, run_policy
from distillery.simulate.policies import Static
from distillery.simulate.workload import Request
from distillery.sizing import Option, PlanError, plan
from distillery.sizing import memory as mem


@dataclass(frozen=True)
class QualityTable:
    scores: Mapping[str, Mapping[str, float]]
    domains: Mapping[str, Sequence[str]]
    penalty: Mapping[str, float]
    source: str = ""

    def score(self, model: str, benchmark: str, quantization: str) -> float | None:
        base = (self.scores.get(model) or {}).get(benchmark)
        if base is None:
            return None
        return base * (1.0 - self.penalty.get(quantization, 0.0))


def load_quality(extra: Sequence[str] = ()) -> QualityTable:
    """The built-in table with user YAML documents merged over it (same shape)."""
    docs = [
        yaml.safe_load(
            resources.files("distillery.catalog")
            .joinpath("data", "quality.yaml")
            .read_text("utf-8")
        )
    ]
    docs += [yaml.safe_load(text) or {} for text in extra]
    scores: dict[str, dict[str, float]] = {}
    domains: dict[str, list[str]] = {}
    penalty: dict[str, float] = {}
    for doc in docs:
        for model, values in (doc.get("models") or {}).items():
            scores.setdefault(model, {}).update({k: float(v) for k, v in values.items()})
        domains.update({k: list(v) for k, v in (doc.get("domains") or {}).items()})
        penalty.update({k: float(v) for k, v in (doc.get("quantizationPenalty") or {}).items()})
    return QualityTable(scores, domains, penalty, str(docs[0].get("source", "")).strip())


@dataclass(frozen=True)
class Requirements:
    floors: Mapping[str, float]
    peak_rps: float
    mean_rps: float
    input_tokens: int
    output_tokens: int
    slo_ttft: float = 2.0
    gpu_types: tuple[str, ...] = ()
    max_cost_per_hour: float | None = None
    max_model_len: int = 32768
    max_concurrency: int = 64
    quantizations: tuple[str, ...] = ("none", "fp8")
    objective: str = "balanced"

    def __post_init__(self) -> None:
        # A negative rate once made the Poisson replay below run backwards forever: every
        # caller, not only the CLI, gets a ValueError naming the field instead.
        problems = [
            f"{name} must be > 0 (got {value:g})"
            for name, value in (
                ("peak_rps", self.peak_rps),
                ("mean_rps", self.mean_rps),
                ("input_tokens", self.input_tokens),
                ("output_tokens", self.output_tokens),
                ("slo_ttft", self.slo_ttft),
                ("max_model_len", self.max_model_len),
                ("max_concurrency", self.max_concurrency),
            )
            if not (math.isfinite(value) and value > 0)
        ]
        if self.mean_rps > self.peak_rps:
            problems.append(f"mean_rps {self.mean_rps:g} exceeds peak_rps {self.peak_rps:g}")
        if self.max_cost_per_hour is not None and not self.max_cost_per_hour > 0:
            problems.append(f"max_cost_per_hour must be > 0 (got {self.max_cost_per_hour:g})")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Candidate:
    model: str
    quantization: str
    gpu: str = ""
    gpus: int = 0
    nodes: int = 1
    replicas_peak: int = 0
    replicas_mean: int = 0
    cost_peak: float = 0.0
    cost_mean: float = 0.0
    cost_per_mtok: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    attainment: float | None = None
    excluded: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "quantization": self.quantization,
            "gpuType": self.gpu,
            "gpusPerReplica": self.gpus,
            "nodesPerReplica": self.nodes,
            "replicasAtPeak": self.replicas_peak,
            "replicasAtMean": self.replicas_mean,
            "costPerHourAtPeak": round(self.cost_peak, 2),
            "costPerHourAtMean": round(self.cost_mean, 2),
            "costPerMillionTokens": (
                round(self.cost_per_mtok, 3) if self.cost_per_mtok is not None else None
            ),
            "scores": {k: round(v, 2) for k, v in self.scores.items()},
            "sloAttainmentEstimate": (
                round(self.attainment, 4) if self.attainment is not None else None
            ),
            **({"excluded": self.excluded} if self.excluded else {}),
        }


def floors_for(
    domain: str | None,
    explicit: Mapping[str, float],
    quality: QualityTable,
    default_floor: float | None = None,
) -> dict[str, float]:
    """Explicit floors, plus (for a domain) its benchmarks at ``default_floor``."""
    out = dict(explicit)
    if domain:
        if domain not in quality.domains:
            raise ValueError(f"unknown domain {domain!r}: one of {', '.join(quality.domains)}")
        for bench in quality.domains[domain]:
            if bench not in out and default_floor is not None:
                out[bench] = default_floor
    return out


def _spec(model: str, quant: str, req: Requirements) -> DistilledModelDeploymentSpec:
    return DistilledModelDeploymentSpec.model_validate(
        {
            "model": {"name": model, "quantization": quant},
            "serving": {
                "maxModelLen": req.max_model_len,
                "maxConcurrency": req.max_concurrency,
                "typicalSequenceTokens": max(16, req.input_tokens + req.output_tokens),
            },
            "placement": {"gpuTypes": list(req.gpu_types) or ["auto"]},
            "scaling": {"slo": {"ttftSeconds": req.slo_ttft}, "objective": req.objective},
        }
    )


def _replicas(rps: float, c: Option, model: ModelEntry, req: Requirements) -> int:
    """Replicas the load needs, by the autoscaler's own capacity rule."""
    gpus = max(1, c.gpu_count)
    prefill_rate = c.gpu.bf16_tflops * 1e12 * gpus * mem.MFU / (2 * model.active_params)
    cap = capacity_for(
        max_concurrency=req.max_concurrency,
        kv_concurrency=c.max_concurrency,
        prefill_tokens_per_second=prefill_rate,
        startup_seconds=0,
        slo_ttft_seconds=req.slo_ttft,
        objective=req.objective,
    )
    batch = max(1, round(cap.target_running))
    step = mem.decode_step_seconds(
        mem.weight_bytes_read(model, c.quantization, batch),
        batch
        * (req.input_tokens + req.output_tokens / 2)
        * mem.kv_bytes_per_token(model, "auto", c.tensor_parallel),
        c.gpu,
        gpus,
    )
    service = req.input_tokens / prefill_rate + req.output_tokens * step
    concurrency = rps * service
    return int(
        max(
            1,
            math.ceil(concurrency / cap.target_running),
            math.ceil(rps * req.input_tokens / cap.prefill_tokens_per_second),
        )
    )


def evaluate(req: Requirements, catalog: Catalog, quality: QualityTable) -> list[Candidate]:
    """Every candidate, ranked: feasible ones by cost at mean load, then the excluded."""
    out: list[Candidate] = []
    unscored = sorted(set(catalog.models) - set(quality.scores))
    for model in sorted(quality.scores):
        if catalog.model(model) is None:
            out.append(
                Candidate(
                    model,
                    "none",
                    excluded=(
                        "not in the model catalog: no architecture to size it "
                        "(add it with --catalog)"
                    ),
                )
            )
            continue
        entry = catalog.model(model)
        released_fp8 = entry is not None and entry.released_fp8
        # A model released in fp8 is scored as released: fp8 is its precision, no penalty.
        quants = ["fp8"] if released_fp8 else req.quantizations
        for quant in quants:
            cand = Candidate(model, quant)
            scored_as = "none" if released_fp8 else quant
            cand.scores = {
                b: s for b in req.floors if (s := quality.score(model, b, scored_as)) is not None
            }
            missing = [b for b in req.floors if b not in cand.scores]
            low = [
                f"{b} {cand.scores[b]:.1f} < {req.floors[b]:g}"
                for b in req.floors
                if b in cand.scores and cand.scores[b] < req.floors[b]
            ]
            if missing:
                cand.excluded = f"no published score for {', '.join(missing)}"
            elif low:
                cand.excluded = "below floor: " + "; ".join(low)
                if scored_as != "none":
                    cand.excluded += f" (after the stated {quant} penalty)"
            if cand.excluded:
                out.append(cand)
                continue
            try:
                p = plan(_spec(model, quant, req), catalog)
            except (PlanError, ValueError) as exc:
                cand.excluded = f"does not fit: {str(exc).split('.')[0]}"
                out.append(cand)
                continue
            c = p.chosen
            if c.quantization != quant:
                cand.excluded = f"planner chose {c.quantization}"
                out.append(cand)
                continue
            cand.gpu, cand.gpus, cand.nodes = c.gpu.name, c.gpus, c.nodes
            cand.replicas_peak = _replicas(req.peak_rps, c, p.model, req)
            cand.replicas_mean = _replicas(req.mean_rps, c, p.model, req)
            cand.cost_peak = cand.replicas_peak * c.cost_per_replica_hour
            cand.cost_mean = cand.replicas_mean * c.cost_per_replica_hour
            tokens_per_hour = req.mean_rps * req.output_tokens * 3600
            cand.cost_per_mtok = cand.cost_mean / tokens_per_hour * 1e6 if tokens_per_hour else None
            if req.max_cost_per_hour is not None and cand.cost_peak > req.max_cost_per_hour:
                cand.excluded = (
                    f"over budget at peak: {cand.cost_peak:.2f} > "
                    f"{req.max_cost_per_hour:g} per hour"
                )
            out.append(cand)
    out += [
        Candidate(
            model,
            "none",
            excluded=(
                "no quality scores in the table: add your own evaluation with --quality FILE "
                "(same shape as catalog/data/quality.yaml)"
            ),
        )
        for model in unscored
    ]
    feasible = sorted(
        (c for c in out if not c.excluded),
        key=lambda c: (c.cost_mean, c.cost_peak, c.model, c.quantization),
    )
    return feasible + [c for c in out if c.excluded]


def estimate_attainment(
    cand: Candidate, req: Requirements, catalog: Catalog, minutes: float = 10.0, seed: int = 0
) -> float:
    """Replay a Poisson stream at peak rate against the candidate's peak replicas."""
    p = plan(_spec(cand.model, cand.quantization, req), catalog)
    rng = random.Random(seed)
    t, reqs = 0.0, []
    while t < minutes * 60:
        t += rng.expovariate(req.peak_rps)
        reqs.append(Request(t, req.input_tokens, req.output_tokens))
    s = Scenario(
        model=p.model,
        option=p.chosen,
        max_concurrency=req.max_concurrency,
        typical_tokens=p.requirements.typical_tokens,
        slo_ttft=req.slo_ttft,
        max_model_len=req.max_model_len,
    )
    result = run_policy(
        reqs, s, Static(replicas=cand.replicas_peak), initial=cand.replicas_peak, zero_startup=True
    )
    return float(result["sloAttainment"])


def recommend(
    req: Requirements, catalog: Catalog, quality: QualityTable, simulate_top: int = 3
) -> list[Candidate]:
    ranked = evaluate(req, catalog, quality)
    for cand in [c for c in ranked if not c.excluded][:simulate_top]:
        cand.attainment = estimate_attainment(cand, req, catalog)
    return ranked


def manifest(cand: Candidate, req: Requirements, name: str) -> dict[str, Any]:
    """A DMD for the winner; `distillery plan` on it picks the same placement."""
    return {
        "apiVersion": "distillery.dev/v1alpha1",
        "kind": "DistilledModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": cand.model, "quantization": cand.quantization},
            "serving": {
                "maxModelLen": req.max_model_len,
                "maxConcurrency": req.max_concurrency,
                "typicalSequenceTokens": max(16, req.input_tokens + req.output_tokens),
            },
            "placement": {"gpuTypes": [cand.gpu], "gpusPerReplica": max(1, cand.gpus)},
            "scaling": {
                "minReplicas": max(1, min(cand.replicas_mean, cand.replicas_peak)),
                "maxReplicas": max(cand.replicas_peak, 1),
                "objective": req.objective,
                "slo": {"ttftSeconds": req.slo_ttft, "percentile": 95},
                **({"maxCostPerHour": req.max_cost_per_hour} if req.max_cost_per_hour else {}),
            },
        },
    }


def tiered_manifests(
    routine: Candidate,
    routine_req: Requirements,
    hard: Candidate,
    hard_req: Requirements,
    name: str,
    budget: float | None,
) -> list[dict[str, Any]]:
    """The two tiers' DMDs and the ReasoningRoute in front of them: clients send
    ``model: NAME``; ``x-reasoning-effort: high`` (or ``model: NAME-hard``) reaches the
    hard tier; the routine tier spills to the hard one when it is saturated or at zero;
    ``budget`` (per hour, at peak) is shared by the two."""
    routine_dmd = manifest(routine, routine_req, f"{name}-routine")
    hard_dmd = manifest(hard, hard_req, f"{name}-hard")
    route: dict[str, Any] = {
        "apiVersion": "distillery.dev/v1alpha1",
        "kind": "ReasoningRoute",
        "metadata": {"name": name},
        "spec": {
            "model": name,
            "tiers": [
                {"name": "routine", "deployment": f"{name}-routine", "priority": 0},
                {"name": "hard", "deployment": f"{name}-hard", "priority": 10},
            ],
            "defaultTier": "routine",
            "rules": [
                {"tier": "hard", "header": {"name": "x-reasoning-effort", "values": ["high"]}},
                {"tier": "hard", "models": [f"{name}-hard"]},
            ],
            "spill": [{"from": "routine", "to": "hard", "when": ["Saturated", "AtZero"]}],
        },
    }
    if budget:
        route["spec"]["budget"] = {"maxCostPerHour": budget}
        # The shared budget is the route's; each tier's own would double-count it.
        for dmd in (routine_dmd, hard_dmd):
            dmd["spec"]["scaling"].pop("maxCostPerHour", None)
    ReasoningRoute.model_validate(route)  # a manifest that would not apply is a bug here
    return [routine_dmd, hard_dmd, route]


def tiered(
    req: Requirements,
    hard_share: float,
    hard_floors: Mapping[str, float],
    catalog: Catalog,
    quality: QualityTable,
    name: str = "reasoning",
) -> dict[str, Any]:
    """A distilled model for routine traffic and a stronger one for the hard share, and
    the manifests that serve them behind one model name (``name``).

    The hard tier must clear the routine floors too, and at least one hard floor must be
    above the routine one: without that the "hard" tier is just the cheapest model again.
    """
    if not 0 < hard_share < 1:
        raise ValueError(f"the hard share must be between 0 and 1 (got {hard_share:g})")
    raised = {b: v for b, v in hard_floors.items() if v > req.floors.get(b, float("-inf"))}
    if not raised:
        raise ValueError(
            "a tiered plan needs a hard floor above the routine ones: give --hard-floor "
            "BENCH=SCORE with a score higher than the matching --floor"
        )
    hard_floors = {
        **req.floors,
        **{b: max(v, req.floors.get(b, v)) for b, v in hard_floors.items()},
    }
    routine_req = replace(
        req, peak_rps=req.peak_rps * (1 - hard_share), mean_rps=req.mean_rps * (1 - hard_share)
    )
    hard_req = replace(
        req,
        floors=dict(hard_floors),
        peak_rps=req.peak_rps * hard_share,
        mean_rps=req.mean_rps * hard_share,
        max_cost_per_hour=None,
    )
    routine = [c for c in evaluate(routine_req, catalog, quality) if not c.excluded]
    hard = [c for c in evaluate(hard_req, catalog, quality) if not c.excluded]
    if not routine or not hard:
        raise ValueError(
            "no tiered plan: "
            + (
                "nothing meets the routine floors"
                if not routine
                else "nothing meets the hard floors"
            )
        )
    total_mean = routine[0].cost_mean + hard[0].cost_mean
    total_peak = routine[0].cost_peak + hard[0].cost_peak
    single = [
        c
        for c in evaluate(replace(req, floors={**req.floors, **hard_floors}), catalog, quality)
        if not c.excluded
    ]
    return {
        "routine": routine[0].to_json(),
        "hard": hard[0].to_json(),
        "manifests": tiered_manifests(
            routine[0], routine_req, hard[0], hard_req, name, req.max_cost_per_hour
        ),
        "hardShare": hard_share,
        "costPerHourAtMean": round(total_mean, 2),
        "costPerHourAtPeak": round(total_peak, 2),
        "singleModelForAll": single[0].to_json() if single else None,
    }
