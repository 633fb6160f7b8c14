"""Rendering: golden files per engine and placement, invariants over wide inputs,
and the user-template sandbox."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillery.api.types import DistilledModelDeployment, Engine
from distillery.catalog import load_catalog
from distillery.engines import ENGINES
from distillery.render import (
    LWS_WORKER_INDEX_LABEL,
    Rendered,
    RenderError,
    RenderOptions,
    manifests_yaml,
    pod_templates,
    render,
)
from distillery.sizing import PlanError, plan
from tests.render_cases import CASES
from tests.support.dmds import dmd as dmd_body

CATALOG = load_catalog()
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "render"
TP_FLAG = {"vllm": "--tensor-parallel-size", "sglang": "--tp", "tgi": "--num-shard"}


def render_case(raw: dict[str, Any], **kwargs: Any) -> tuple[DistilledModelDeployment, Rendered]:
    dmd = DistilledModelDeployment.model_validate(raw)
    return dmd, render(dmd, plan(dmd.spec, CATALOG), owner_uid="0000-uid", **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    _, rendered = render_case(CASES[case], options=RenderOptions(pod_monitor=True))
    text = manifests_yaml(rendered)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs: review, then UPDATE_GOLDEN=1"


def engine_container(rendered: Rendered) -> dict[str, Any]:
    pod = pod_templates(rendered.workload)[0]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "engine")


def check_invariants(dmd: DistilledModelDeployment, rendered: Rendered) -> None:
    chosen = plan(dmd.spec, CATALOG).chosen
    templates = pod_templates(rendered.workload)
    assert len(templates) == (2 if chosen.nodes > 1 else 1)
    assert rendered.workload["kind"] == ("LeaderWorkerSet" if chosen.nodes > 1 else "Deployment")
    pod = templates[0]["spec"]
    engine = engine_container(rendered)
    limits = engine["resources"].get("limits", {})
    if chosen.gpus:
        # Each pod takes one node's share of the replica's GPUs.
        assert limits["nvidia.com/gpu"] == str(chosen.gpus // chosen.nodes)
        term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        expr = term["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert expr == {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": [chosen.gpu.product],
        }
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
    else:
        assert "nvidia.com/gpu" not in limits
    flag = TP_FLAG.get(dmd.spec.serving.engine)
    if flag:
        args = engine["args"]
        assert args[args.index(flag) + 1] == str(chosen.tensor_parallel)
    # Secrets only by reference.
    for item in engine["env"]:
        if "valueFrom" in item:
            assert set(item) == {"name", "valueFrom"}
        if item["name"] in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            assert "secretKeyRef" in item["valueFrom"]
    # Selector matches the pod labels, Service and PDB select the pods.
    labels = templates[0]["metadata"]["labels"]
    for k, v in rendered.workload["spec"].get("selector", {}).get("matchLabels", {}).items():
        assert labels[k] == v
    # The Service selects the pods (a group's leader, labelled by the LWS controller).
    for k, v in rendered.service["spec"]["selector"].items():
        if k == LWS_WORKER_INDEX_LABEL:
            assert chosen.nodes > 1 and v == "0"
        else:
            assert labels[k] == v
    # The PDB covers every pod of the DMD, leaders and workers.
    assert rendered.pdb["spec"]["selector"]["matchLabels"] == {
        "distillery.dev/deployment": dmd.name
    }
    scaling = dmd.spec.scaling
    assert scaling.min_replicas <= rendered.workload["spec"]["replicas"] <= scaling.max_replicas
    assert labels["distillery.dev/revision"] == rendered.revision
    for obj in rendered.objects():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "0000-uid"
        assert len(obj["metadata"]["name"]) <= 63


@pytest.mark.parametrize("case", sorted(CASES))
def test_invariants_on_cases(case: str) -> None:
    check_invariants(*render_case(CASES[case]))


MARKER = "sk-live-DO-NOT-LEAK-1234"

specs = st.fixed_dictionaries(
    {
        "model": st.fixed_dictionaries(
            {
                "name": st.sampled_from(sorted(CATALOG.models)),
                "quantization": st.sampled_from(["auto", "none", "fp8"]),
                "revision": st.sampled_from(["main", "v1.0", "a1b2c3d"]),
                "credentialsSecretRef": st.just({"name": "hf-token", "key": "token"}),
            }
        ),
        "serving": st.fixed_dictionaries(
            {
                "engine": st.sampled_from(["vllm", "sglang", "tgi", "llamacpp"]),
                "maxModelLen": st.sampled_from([4096, 16384, 32768]),
                "maxConcurrency": st.integers(1, 128),
                "extraArgs": st.lists(
                    st.sampled_from(
                        ["--enable-prefix-caching", "$(rm -rf /)", "--x=`id`", "a b; c"]
                    ),
                    max_size=3,
                ),
                "env": st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.sampled_from(["A", "B_C", "LOG"]),
                            "value": st.text(max_size=20),
                        }
                    ),
                    max_size=2,
                    unique_by=lambda e: e["name"],
                ),
            }
        ),
        "placement": st.fixed_dictionaries(
            {
                "gpuTypes": st.one_of(
                    st.just(["auto"]),
                    st.lists(
                        st.sampled_from(sorted(CATALOG.gpus)), min_size=1, max_size=3, unique=True
                    ),
                ),
                "spot": st.booleans(),
            }
        ),
        "scaling": st.fixed_dictionaries(
            {"minReplicas": st.integers(1, 3), "maxReplicas": st.integers(3, 10)}
        ),
        "replicas": st.one_of(st.none(), st.integers(0, 20)),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_any_valid_spec_renders_with_invariants(spec: dict[str, Any]) -> None:
    raw = dmd_body("prop", {k: v for k, v in spec.items() if v is not None}, namespace="ns")
    dmd = DistilledModelDeployment.model_validate(raw)
    try:
        p = plan(dmd.spec, CATALOG)
    except PlanError:
        return
    rendered = render(dmd, p, owner_uid="0000-uid")
    check_invariants(dmd, rendered)
    text = manifests_yaml(rendered)
    assert list(yaml.safe_load_all(text))  # parses back
    # argv, not a shell: user strings stay single arguments
    engine = engine_container(rendered)
    for arg in dmd.spec.serving.extra_args:
        assert arg in engine["args"]
    assert engine["command"][0] not in ("sh", "/bin/sh", "bash")


def test_same_spec_renders_identically_and_revision_tracks_pod_template() -> None:
    _, a = render_case(CASES["vllm-1xl4"])
    _, b = render_case(CASES["vllm-1xl4"])
    assert manifests_yaml(a) == manifests_yaml(b)
    _, scaled = render_case(CASES["vllm-1xl4"], replicas=3)
    assert scaled.revision == a.revision  # replicas are not part of the revision
    changed = dict(CASES["vllm-1xl4"])
    changed["spec"] = {**changed["spec"], "model": {**changed["spec"]["model"], "revision": "v2"}}
    _, rolled = render_case(changed)
    assert rolled.revision != a.revision


def test_every_engine_of_the_api_has_one_record() -> None:
    """The CRD's engine enum and the engine records agree: adding an engine is its module,
    its registry line and its name in the API."""
    assert set(get_args(Engine)) == set(ENGINES)
    for name, engine in ENGINES.items():
        assert engine.name == name and engine.image and engine.start_seconds > 0
        assert "none" in engine.quantizations
        assert engine.queries.running.startswith("sum by (namespace, pod)")


# ---- user templates -----------------------------------------------------------------

GOOD_TEMPLATE = """
metadata:
  annotations:
    team: {{ dmd.name }}-owners
spec:
  priorityClassName: inference-high
  containers:
    - name: engine
      env:
        - name: EXTRA
          value: "{{ placement.gpuType }}"
    - name: sidecar
      image: busybox:1.36
      args: ["sleep", "infinity"]
"""


def test_user_template_merges() -> None:
    _, r = render_case(CASES["vllm-1xl4"], user_template=GOOD_TEMPLATE)
    pod = r.workload["spec"]["template"]
    assert pod["spec"]["priorityClassName"] == "inference-high"
    assert pod["metadata"]["annotations"]["team"] == "qwen-1-5b-owners"
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["engine", "sidecar"]
    env = {e["name"]: e.get("value") for e in engine_container(r)["env"]}
    assert env["EXTRA"] == "nvidia-l4" and env["HF_HOME"] == "/models/hf"
    _, plain = render_case(CASES["vllm-1xl4"])
    assert r.revision != plain.revision


def test_user_template_adds_tolerations_and_keeps_the_gpu_one() -> None:
    source = "spec: {tolerations: [{key: reserved-for, operator: Exists, effect: NoSchedule}]}"
    _, plain = render_case(CASES["vllm-1xl4"])
    _, r = render_case(CASES["vllm-1xl4"], user_template=source)
    before = plain.workload["spec"]["template"]["spec"]["tolerations"]
    after = r.workload["spec"]["template"]["spec"]["tolerations"]
    assert before and after[: len(before)] == before
    assert after[len(before) :] == [
        {"key": "reserved-for", "operator": "Exists", "effect": "NoSchedule"}
    ]


@pytest.mark.parametrize(
    "source,message",
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("{{ dmd.__class__ }}", "unsafe"),
        ("{% include '/etc/passwd' %}", "not allowed"),
        ("{% import 'x' as y %}", "not allowed"),
        ("{% extends 'base' %}", "not allowed"),
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "steps",
        ),
        ("{{ 'x' * 1000000000 }}", "repetition too large"),
        ("{{ 10 ** 100000 }}", "exponent too large"),
        ("{{ range(10**9) | list }}", "Range too big"),
        ("{% for i in range(99999) %}{{ 'y' * 9999 }}{% endfor %}", "exceeds"),
        ("{{ missing_variable }}", "undefined"),
        ("{% if %}", "does not compile"),
        ("- a list", "only 'metadata' and/or 'spec'"),
        ("kind: Pod", "only 'metadata' and/or 'spec'"),
        (
            "spec: {containers: [{name: engine, resources: {limits: {nvidia.com/gpu: '8'}}}]}",
            "resources",
        ),
        ("spec: {containers: [{name: engine, args: ['--evil']}]}", "args"),
        ("spec: {affinity: {nodeAffinity: null}}", "node affinity"),
        ("spec: {tolerations: null}", "removes a toleration"),
        ("metadata: {labels: {distillery.dev/deployment: someone-else}}", "labels"),
        ("spec: {containers: null}", "removed the 'engine' container"),
        ("spec: [unclosed", "valid YAML"),
    ],
)
def test_hostile_user_templates_refused(source: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render_case(CASES["vllm-1xl4"], user_template=source)


def test_secret_values_never_rendered() -> None:
    # The operator never reads Secret values; a value placed in plain env by the user is
    # theirs, but credentials from credentialsSecretRef appear only as references.
    _, r = render_case(CASES["vllm-4xh100-tp"])
    text = manifests_yaml(r)
    assert MARKER not in text
    assert "secretKeyRef" in text and "hf-token" in text


def test_sglang_puts_an_slo_between_its_boundaries_on_one() -> None:
    """SGLang lets its TTFT buckets be set: an SLO it has no boundary for gets one, so
    attainment is measured exactly; vLLM's are fixed and get nothing."""
    raw = {**CASES["sglang-1xh100"]}
    raw["spec"] = {**raw["spec"], "scaling": {"slo": {"ttftSeconds": 1.5}}}
    args = engine_container(render_case(raw)[1])["args"]
    flag = args.index("--bucket-time-to-first-token")
    boundaries = [float(a) for a in args[flag + 1 : flag + 20] if not a.startswith("--")]
    assert 1.5 in boundaries and boundaries == sorted(boundaries) and 1.0 in boundaries
    # On a default boundary (2 s), the defaults stand and no flag is rendered.
    assert (
        "--bucket-time-to-first-token"
        not in engine_container(render_case(CASES["sglang-1xh100"])[1])["args"]
    )
    vllm = {**CASES["vllm-1xh100"]}
    vllm["spec"] = {**vllm["spec"], "scaling": {"slo": {"ttftSeconds": 1.5}}}
    assert not any("bucket" in a for a in engine_container(render_case(vllm)[1])["args"])


def test_a_group_surges_in_whole_groups_of_its_gpus() -> None:
    # An R1 replica on H100 is 16 GPUs: 16 spare GPUs surge one group, 8 cannot hold
    # one, so the group set replaces one group at a time.
    base = CASES["vllm-r1-2x8xh100"]
    for gpus, expected in (
        (16, {"maxSurge": 1, "maxUnavailable": 0}),
        (8, {"maxSurge": 0, "maxUnavailable": 1}),
    ):
        raw = {**base, "spec": {**base["spec"], "rollout": {"maxSurgeGPUs": gpus}}}
        _, rendered = render_case(raw)
        rollout = rendered.workload["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]
        assert rollout == expected, gpus
    # Workers run the engine's headless rank: no API, so no probes and no scrape.
    worker = pod_templates(rendered.workload)[1]
    engine = next(c for c in worker["spec"]["containers"] if c["name"] == "engine")
    assert "--headless" in engine["args"] and "$(LWS_WORKER_INDEX)" in engine["args"]
    assert not {"readinessProbe", "startupProbe", "livenessProbe", "ports"} & set(engine)
    assert not any(k.startswith("prometheus.io/") for k in worker["metadata"]["annotations"])


# ---- parsing a rendered template: a layout parsed once, values put in ---------------

KEYS = st.text(max_size=200)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(),
    # Keys under YAML's 1,024-character limit on a flow mapping's key, which only the
    # plain way has (Kubernetes keys are shorter still).
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.text(min_size=1),
    labels=st.dictionaries(KEYS, JSON_VALUES, max_size=4),
    port=JSON_VALUES,
    owner=JSON_VALUES,
)
def test_a_layout_filled_with_values_is_what_yaml_reads(
    name: str, labels: dict[str, Any], port: Any, owner: Any
) -> None:
    """Any value, however it is quoted, escaped or numbered (JSON's 1e-05 is a string to
    YAML 1.1), comes out as parsing the whole rendered text with YAML gives it."""
    from distillery.render.layout import load_template, parse_rendered, render_text

    context = {
        "name": name,
        "namespace": "ns",
        "labels": labels,
        "owner": owner,
        "service_selector": labels,
        "port": port,
    }
    expected = parse_rendered(render_text("service.yaml.j2", context))
    assert load_template("service.yaml.j2", context) == expected
    # Each object is its own: a caller's change does not reach the next render.
    first = load_template("service.yaml.j2", context)
    first["spec"]["ports"].append("mutated")
    assert load_template("service.yaml.j2", context) == expected


def test_a_value_inside_a_longer_scalar_is_parsed_the_plain_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jinja2 import ChoiceLoader, DictLoader

    from distillery.render import layout

    extra = DictLoader(
        {"inline.yaml.j2": "kind: X\nname: x-{{ v | tojson }}\nn: {{ n | tojson }}\n"}
    )
    packaged = layout._ENV.loader
    assert packaged is not None
    monkeypatch.setattr(layout._ENV, "loader", ChoiceLoader([extra, packaged]))
    assert layout.load_template("inline.yaml.j2", {"v": "a", "n": 1e-05}) == {
        "kind": "X",
        "name": 'x-"a"',
        "n": "1e-05",
    }
