"""The real vLLM runs in ``benchmarks/data/vllm-h100-inference-perf.json`` as fleet-model
replicas: shared by the step-model fit and the fidelity report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distillery.catalog import ModelEntry, load_catalog
from distillery.simulate.calibration import (
    METRICS,
    Measured,
    compare,
    reference,
    replay,
    stage_requests,
)
from distillery.simulate.fleet import ReplicaModel
from distillery.sizing import memory as mem
from distillery.sizing.steptime import StepConstants, step_model

DATA = Path(__file__).resolve().parent / "data" / "vllm-h100-inference-perf.json"
# shared_prefix datasets re-send num_groups x num_prompts_per_group prompts (10 x 10 in
# the runs' results/config.yaml): every later send is a prefix-cache hit.
DISTINCT_PROMPTS = 100
SEED = 1


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
    return doc


def model_entry(arch: dict[str, Any]) -> ModelEntry:
    return ModelEntry(
        name=arch["name"],
        params_billions=arch["paramsBillions"],
        layers=arch["layers"],
        hidden_size=arch["hiddenSize"],
        intermediate_size=arch["intermediateSize"],
        attention_heads=arch["attentionHeads"],
        kv_heads=arch["kvHeads"],
        head_dim=arch["headDim"],
        vocab_size=arch["vocabSize"],
        max_positions=arch["maxPositions"],
    )


def replica(doc: dict[str, Any], stage: dict[str, Any], constants: StepConstants) -> ReplicaModel:
    server, arch = doc["server"], doc["models"][stage["model"]]
    gpu = load_catalog().gpus[server["gpu"]]
    m, tp = model_entry(arch), int(stage["tp"])
    est = mem.estimate(m, gpu, tp, "none", server["gpuMemoryUtilization"], server["maxNumSeqs"])
    return ReplicaModel(
        steps=step_model(m, gpu, tp, "none", constants, arch.get("activeParamsBillions")),
        kv_capacity_tokens=est.kv_tokens,
        max_seqs=server["maxNumSeqs"],
        price_per_hour=0.0,
        startup_seconds=0.0,
        batch_tokens=server["maxNumBatchedTokens"],
        max_model_len=server["maxModelLen"],
    )


def evaluate(
    doc: dict[str, Any], stage: dict[str, Any], constants: StepConstants
) -> tuple[Measured, Measured, dict[str, float]]:
    """(model, measured, relative error per metric) for one stage."""
    requests = stage_requests(stage, SEED, DISTINCT_PROMPTS)
    got = replay(replica(doc, stage, constants), requests, float(stage["durationSeconds"]))
    ref = reference(stage)
    return got, ref, compare(got, ref)


def load_level(stage: dict[str, Any]) -> str:
    if stage.get("overload"):
        return "overload"
    if float(stage["ttft"]["mean"]) > 1.0:
        return "near-saturation"
    return "light" if float(stage["rate"]) <= 8 else "medium"


__all__ = ["METRICS", "evaluate", "load", "load_level", "replica"]
