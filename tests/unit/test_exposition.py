"""The emulators' vLLM metrics against the pinned release's metric list.

``tests/data/vllm-metrics.json`` lists what vLLM exports (sources cited in it). The
emulators write through :func:`distillery.simulate.exposition.exposition`; what it
writes must parse as the same families, types, label names and buckets, and every
metric the operator queries for vLLM must be one the release exports.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from distillery.engines import ENGINES, vllm
from distillery.simulate.exposition import VllmPod, exposition

CONTRACT = json.loads((Path(__file__).parents[1] / "data" / "vllm-metrics.json").read_text())
FAMILIES: dict[str, dict[str, Any]] = {f["name"]: f for f in CONTRACT["families"]}
TARGET_LABELS = {"namespace", "pod"}


def emulated() -> str:
    pod = VllmPod(
        running=3,
        waiting=1,
        kv_usage=0.4,
        prompt_tokens=1000,
        computed_prompt_tokens=600,
        generation_tokens=5000,
        finished={"stop": 9, "length": 1},
        ttft_counts=[0.0] * 11 + [10.0] + [0.0] * 11,
        ttft_sum=8.0,
        responses={"2xx": 10, "5xx": 2},
    )
    return exposition(
        [({"namespace": "ns", "pod": "a"}, pod), ({"namespace": "ns", "pod": "b"}, VllmPod())],
        "m",
    )


def test_the_pinned_release_is_the_one_the_operator_knows() -> None:
    assert CONTRACT["release"] == vllm.VERSION
    assert ENGINES["vllm"].image.endswith(f":{vllm.VERSION}")
    ttft = FAMILIES["vllm:time_to_first_token_seconds"]
    assert tuple(ttft["buckets"]) == vllm.TTFT_BUCKETS
    reasons = FAMILIES["vllm:request_success"]["label_values"]["finished_reason"]
    assert tuple(reasons) == vllm.FINISHED_REASONS


def test_emulator_exports_what_vllm_exports() -> None:
    parsed = {f.name: f for f in text_string_to_metric_families(emulated())}
    assert set(parsed) == set(FAMILIES), "families differ from the pinned release"
    for name, contract in FAMILIES.items():
        family = parsed[name]
        assert family.type == contract["type"], name
        values: dict[str, set[str]] = {}
        for s in family.samples:
            labels = set(s.labels) - TARGET_LABELS - {"le"}
            assert labels == set(contract["labels"]), (name, s.labels)
            for k, v in s.labels.items():
                values.setdefault(k, set()).add(v)
        for label, allowed in contract.get("label_values", {}).items():
            assert values[label] <= set(allowed), (name, label, values[label])
        if "buckets" in contract:
            les = sorted({float(v) for v in values["le"]})
            assert les == [*contract["buckets"], math.inf]
    # Every finished_reason exists from the start, at 0, as vLLM creates them.
    success = parsed["vllm:request_success"]
    idle = {s.labels["finished_reason"]: s.value for s in success.samples if s.labels["pod"] == "b"}
    assert idle == dict.fromkeys(vllm.FINISHED_REASONS, 0.0)


def test_emulated_values_read_back() -> None:
    parsed = {f.name: f for f in text_string_to_metric_families(emulated())}

    def value(family: str, suffix: str = "", **labels: str) -> float:
        return next(
            s.value
            for s in parsed[family].samples
            if s.name == family + suffix
            and s.labels["pod"] == "a"
            and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("vllm:prompt_tokens_by_source", "_total", source="local_compute") == 600
    assert value("vllm:prompt_tokens_by_source", "_total", source="local_cache_hit") == 400
    ttft = "vllm:time_to_first_token_seconds"
    assert value(ttft, "_bucket", le="0.75") == 0 and value(ttft, "_bucket", le="1.0") == 10
    assert value(ttft, "_sum") == 8.0 and value(ttft, "_count") == 10
    assert value("http_requests", "_total", status="5xx") == 2


def test_every_vllm_query_names_an_exported_metric() -> None:
    engine = ENGINES["vllm"]
    texts = [v for v in vars(engine.queries).values() if isinstance(v, str)]
    for pair in vars(engine.analysis).values():
        if isinstance(pair, tuple):
            texts.append(pair[0])
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    exported = {name + s for name, f in FAMILIES.items() for s in suffixes[f["type"]]}
    named = {m for t in texts for m in re.findall(r"(vllm:[a-z_]+|http_requests_total)", t)}
    # kv_usage also matches the name older releases used, on purpose.
    assert named - exported <= {"vllm:gpu_cache_usage_perc"}, named - exported
    assert "vllm:time_to_first_token_seconds_sum" in named


def test_rendered_vllm_arguments_are_the_pinned_releases() -> None:
    """Every flag distillery renders for vLLM, over the golden renders, is one the pinned
    release's `vllm serve` takes, with a value it accepts."""
    import yaml

    golden = Path(__file__).parents[1] / "golden" / "render"
    known = CONTRACT["serve_flags"]
    seen: set[str] = set()
    for path in sorted(golden.glob("vllm-*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] != "engine":
                    continue
                assert c["command"] == ["vllm", "serve"]
                args = c["args"]
                for i, arg in enumerate(args):
                    if not arg.startswith("--"):
                        continue
                    assert arg in known["flags"], f"{path.name}: {arg}"
                    seen.add(arg)
                    if arg == "--quantization":
                        assert args[i + 1] in known["quantization"]
                    if arg == "--kv-cache-dtype":
                        assert args[i + 1] in known["kv_cache_dtype"]
    assert {"--served-model-name", "--tensor-parallel-size", "--max-num-seqs"} <= seen
