"""`distillery recommend`: floors hold, the cheapest feasible wins, every exclusion says
why, and the emitted manifest plans to the same placement."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.api.types import DistilledModelDeploymentSpec
from distillery.catalog import load_catalog
from distillery.cli import main
from distillery.recommend import Requirements, evaluate, load_quality, manifest, tiered
from distillery.sizing import plan

CATALOG = load_catalog()
QUALITY = load_quality()
BENCHES = ["aime2024", "math500", "gpqa-diamond", "livecodebench"]


def req(**kw: Any) -> Requirements:
    base: dict[str, Any] = dict(
        floors={"aime2024": 50.0}, peak_rps=2.0, mean_rps=1.0, input_tokens=500, output_tokens=2000
    )
    base.update(kw)
    return Requirements(**base)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from(BENCHES), st.floats(10, 95), min_size=1, max_size=3),
    st.floats(0.1, 10),
    st.sampled_from([(), ("nvidia-l40s",), ("nvidia-h100-80gb", "nvidia-l4")]),
)
def test_floors_never_violated_and_cheapest_first(
    floors: dict[str, float], peak: float, gpus: tuple[str, ...]
) -> None:
    ranked = evaluate(
        req(floors=floors, peak_rps=peak, mean_rps=peak / 2, gpu_types=gpus), CATALOG, QUALITY
    )
    feasible = [c for c in ranked if not c.excluded]
    for c in feasible:
        for bench, floor in floors.items():
            # A model released in fp8 is scored as released; others pay the stated penalty.
            as_released = CATALOG.models[c.model].released_fp8
            scored = QUALITY.score(c.model, bench, "none" if as_released else c.quantization)
            assert scored is not None and scored == c.scores[bench] >= floor
        if gpus:
            assert c.gpu in gpus
    costs = [c.cost_mean for c in feasible]
    assert costs == sorted(costs)
    for c in ranked:
        if c.excluded:
            assert len(c.excluded) > 10


def test_quantized_variants_pay_the_stated_penalty() -> None:
    # Llama-8B scores 50.4 on AIME; fp8 pays 1%: 49.9 < 50.
    ranked = evaluate(req(), CATALOG, QUALITY)
    llama_fp8 = next(c for c in ranked if c.model.endswith("Llama-8B") and c.quantization == "fp8")
    assert "after the stated fp8 penalty" in llama_fp8.excluded
    # The teacher is released in fp8: scored as released, with no penalty.
    [teacher] = [c for c in ranked if c.model == "deepseek-ai/DeepSeek-R1"]
    assert teacher.quantization == "fp8" and teacher.scores == {"aime2024": 79.8}


def test_the_teacher_is_ranked_with_its_real_cost() -> None:
    # DeepSeek-R1 (671B MoE, fp8) takes a whole 8-GPU node; on H100 only, two nodes.
    ranked = evaluate(req(floors={"aime2024": 75.0}), CATALOG, QUALITY)
    [teacher] = [c for c in ranked if not c.excluded]
    assert teacher.model == "deepseek-ai/DeepSeek-R1"
    h200 = CATALOG.gpus["nvidia-h200"].price_per_gpu_hour
    assert (teacher.gpu, teacher.gpus, teacher.nodes) == ("nvidia-h200", 8, 1)
    assert teacher.cost_mean == teacher.replicas_mean * 8 * h200
    h100_only = evaluate(
        req(floors={"aime2024": 75.0}, gpu_types=("nvidia-h100-80gb",)), CATALOG, QUALITY
    )
    [teacher] = [c for c in h100_only if not c.excluded]
    h100 = CATALOG.gpus["nvidia-h100-80gb"].price_per_gpu_hour
    assert (teacher.gpus, teacher.nodes) == (16, 2)
    assert teacher.cost_mean == teacher.replicas_mean * 16 * h100
    # Its manifest plans to the same two-node placement.
    spec = DistilledModelDeploymentSpec.model_validate(manifest(teacher, req(), "teacher")["spec"])
    chosen = plan(spec, CATALOG).chosen
    assert (chosen.gpus, chosen.nodes, chosen.quantization) == (16, 2, "fp8")


def test_budget_excludes_with_reason() -> None:
    ranked = evaluate(req(max_cost_per_hour=5.0, peak_rps=5), CATALOG, QUALITY)
    assert any("over budget" in c.excluded for c in ranked)
    assert all(c.cost_peak <= 5.0 for c in ranked if not c.excluded)


def test_manifest_plans_to_the_same_placement() -> None:
    r = req(gpu_types=("nvidia-l40s", "nvidia-a100-80gb"))
    winner = next(c for c in evaluate(r, CATALOG, QUALITY) if not c.excluded)
    doc = manifest(winner, r, "pick")
    spec = DistilledModelDeploymentSpec.model_validate(doc["spec"])
    chosen = plan(spec, CATALOG).chosen
    assert (chosen.gpu.name, chosen.gpus, chosen.quantization) == (
        winner.gpu,
        winner.gpus,
        winner.quantization,
    )


def test_cli_table_json_yaml_and_tiers(tmp_path: Path) -> None:
    args = [
        "recommend",
        "--floor",
        "aime2024=50",
        "--peak-rps",
        "2",
        "--simulate-top",
        "1",
        "--gpu-type",
        "nvidia-l40s",
        "--gpu-type",
        "nvidia-h100-80gb",
    ]
    out = io.StringIO()
    assert main(args, out=out) == 0 and "excluded:" in out.getvalue()
    out = io.StringIO()
    assert main([*args, "-o", "json"], out=out) == 0
    doc = json.loads(out.getvalue())
    first = doc["candidates"][0]
    assert 0 <= first["sloAttainmentEstimate"] <= 1
    out = io.StringIO()
    assert main([*args, "-o", "yaml"], out=out) == 0
    assert yaml.safe_load(out.getvalue()) == {**doc, "candidates": doc["candidates"]}
    out = io.StringIO()
    assert main([*args, "--manifest", "-"], out=out) == 0
    dmd = yaml.safe_load(out.getvalue())
    assert dmd == doc["manifest"]
    f = tmp_path / "dmd.yaml"
    f.write_text(yaml.safe_dump(dmd))
    out = io.StringIO()
    assert main(["plan", str(f), "-o", "json"], out=out) == 0
    assert json.loads(out.getvalue())[0]["placement"]["gpuType"] == first["gpuType"]
    t = tiered(req(), 0.2, {"aime2024": 70}, CATALOG, QUALITY)
    assert t["hard"]["scores"]["aime2024"] >= 70 and t["routine"]["scores"]["aime2024"] >= 50
    assert t["costPerHourAtMean"] > 0


def test_tiers_put_the_teacher_on_the_hard_share() -> None:
    # Routine traffic clears AIME 50 on a distilled model; the hard fifth needs 75, which
    # only the teacher scores. Both pools come from the planner and add up.
    t = tiered(req(), 0.2, {"aime2024": 75}, CATALOG, QUALITY)
    hard, routine = t["hard"], t["routine"]
    assert hard["model"] == "deepseek-ai/DeepSeek-R1" and hard["quantization"] == "fp8"
    assert (hard["gpuType"], hard["gpusPerReplica"], hard["nodesPerReplica"]) == (
        "nvidia-h200",
        8,
        1,
    )
    assert routine["model"] != hard["model"] and routine["scores"]["aime2024"] >= 50
    assert t["costPerHourAtMean"] == pytest.approx(
        hard["costPerHourAtMean"] + routine["costPerHourAtMean"], abs=0.02
    )
    h200 = CATALOG.gpus["nvidia-h200"].price_per_gpu_hour
    assert hard["costPerHourAtMean"] == pytest.approx(hard["replicasAtMean"] * 8 * h200, abs=0.01)
