"""`distillery plan` and `distillery crd` as a user runs them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from distillery.api.crd import crd_yaml, route_crd_yaml
from distillery.cli import main
from tests.support.dmds import dmd_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("deepseek-r1-distill-*.yaml"))
PLACEMENT_KEYS = {
    "gpuType",
    "gpuProduct",
    "gpuCount",
    "tensorParallel",
    "quantization",
    "nodes",
    "pipelineParallel",
    "expertParallel",
}
MEMORY_KEYS = {"weightsGiB", "kvCacheGiB", "overheadGiB", "freeGiB", "budgetGiB"}


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), out=out), out.getvalue()


def test_six_distill_examples_exist() -> None:
    assert len(EXAMPLES) == 6


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_plan_json_is_stable(path: Path) -> None:
    code, out = run("plan", str(path), "-o", "json")
    assert code == 0
    [doc] = json.loads(out)  # always a list, even for one manifest
    assert set(doc["placement"]) == PLACEMENT_KEYS
    assert set(doc["memory"]) == MEMORY_KEYS
    for key in ("kvCacheTokens", "maxConcurrency", "costPerReplicaHour", "alternatives"):
        assert key in doc
    assert doc["placement"]["tensorParallel"] == max(1, doc["placement"]["gpuCount"])
    for alt in doc["alternatives"]:
        assert set(alt["placement"]) == PLACEMENT_KEYS
        assert isinstance(alt["feasible"], bool) and alt["reason"]
        if alt["feasible"]:
            assert alt["costPerMillionTokens"] >= doc["costPerMillionTokens"]


def test_plan_table_lists_alternatives() -> None:
    code, out = run("plan", str(ROOT / "examples" / "deepseek-r1-distill-qwen-32b.yaml"))
    assert code == 0
    assert "placement   2x nvidia-l40s" in out
    assert "WHY NOT" in out and "costs more" in out


def test_plan_and_render_say_when_the_slo_falls_between_buckets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = str(ROOT / "examples" / "deepseek-r1-distill-qwen-7b.yaml")  # vLLM, 2 s SLO
    code, out = run("plan", example)
    assert code == 0
    slo_line = next(line for line in out.splitlines() if line.startswith("  slo "))
    assert "no boundary between 1 s and 2.5 s" in slo_line
    code, out = run("plan", example, "-o", "json")
    [doc] = json.loads(out)
    assert doc["slo"]["measurable"] is False and doc["slo"]["reason"] == "BetweenBuckets"
    code, out = run("render", example)
    assert code == 0 and "2.5 s" not in out  # stdout is only the manifests
    assert "note: vLLM's TTFT histogram has no boundary" in capsys.readouterr().err


def test_plan_nothing_fits_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "big.yaml"
    spec = {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "quantization": "none"},
        "placement": {"gpuTypes": ["nvidia-t4"], "maxNodesPerReplica": 1},
    }
    f.write_text(dmd_yaml("big", spec))
    code, _ = run("plan", str(f), "-o", "json")
    assert code == 1
    err = capsys.readouterr().err
    assert "does not fit nvidia-t4" in err and "Would fit" in err


def test_plan_rejects_invalid_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        "apiVersion: distillery.dev/v1alpha1\nkind: DistilledModelDeployment\n"
        "metadata: {name: bad}\nspec:\n  model: {name: x}\n"
        "  scaling: {minReplicas: 3, maxReplicas: 1}\n"
    )
    assert run("plan", str(f))[0] == 1
    assert "spec.scaling: minReplicas must be less than or equal" in capsys.readouterr().err


def test_plan_reads_streams_and_skips_other_kinds(tmp_path: Path) -> None:
    docs = [yaml.safe_load(p.read_text()) for p in EXAMPLES[:2]]
    f = tmp_path / "stream.yaml"
    f.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "Secret"}, *docs]))
    code, out = run("plan", str(f), "-o", "json")
    assert code == 0 and len(json.loads(out)) == 2


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "no DistilledModelDeployment found"),
        ("a: [unclosed", "not valid YAML"),
    ],
)
def test_plan_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    f = tmp_path / "f.yaml"
    f.write_text(content)
    assert run("plan", str(f))[0] == 1
    assert message in capsys.readouterr().err


def test_plan_with_user_prices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = str(ROOT / "examples" / "deepseek-r1-distill-qwen-7b.yaml")
    partial = tmp_path / "partial.yaml"
    partial.write_text("currency: EUR\ngpus:\n  - {name: nvidia-a100-80gb, pricePerGpuHour: 0.1}\n")
    # A currency change that leaves USD prices behind is refused, naming what is missing.
    code, _ = run("plan", example, "--catalog", str(partial))
    assert code == 1
    err = capsys.readouterr().err
    assert "sets currency EUR" in err and "nvidia-h100-80gb" in err and "nvidia-l4," in err
    assert "nvidia-a100-80gb" not in err.split("no price in EUR:")[1].split(".")[0]
    gpus = yaml.safe_load((ROOT / "operator/distillery/catalog/data/gpus.yaml").read_text())["gpus"]
    full = tmp_path / "full.yaml"
    full.write_text(
        yaml.safe_dump(
            {
                "currency": "EUR",
                "gpus": [
                    {"name": g["name"], "pricePerGpuHour": 0.1 if "a100-80" in g["name"] else 50}
                    for g in gpus
                ],
            }
        )
    )
    code, out = run("plan", example, "-o", "json", "--catalog", str(full))
    [doc] = json.loads(out)
    assert code == 0 and doc["currency"] == "EUR"
    assert doc["placement"]["gpuType"] == "nvidia-a100-80gb"
    assert all("EUR" in a["reason"] for a in doc["alternatives"] if a["feasible"])


def test_crd_command(tmp_path: Path) -> None:
    code, out = run("crd")
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert code == 0 and [d["spec"]["names"]["kind"] for d in docs] == [
        "DistilledModelDeployment",
        "ReasoningRoute",
    ]
    assert main(["crd", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "distillery.dev_distilledmodeldeployments.yaml").read_text() == crd_yaml()
    assert (tmp_path / "distillery.dev_reasoningroutes.yaml").read_text() == route_crd_yaml()


REPORT_KEYS = {
    "gpuHours", "cost", "sloAttainment", "sloAttainmentFeasible", "ttftP50", "ttftP95",
    "ttftP99", "scaleEvents", "flaps", "peakReplicas", "dropped", "rejected", "replicas",
}  # fmt: skip


def test_simulate_writes_the_report(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "timestamp_s,input_tokens,output_tokens\n"
        + "".join(f"{i * 0.5},{800 + 10 * (i % 7)},{200 + 5 * (i % 11)}\n" for i in range(600))
    )
    report = tmp_path / "r.json"
    code, out = run(
        "simulate", "--trace", str(trace), "--format", "csv",
        "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "--gpu", "nvidia-l40s",
        "--policy", "distillery,keda-tuned,clairvoyant", "--scenario", "cold",
        "--report", str(report),
    )  # fmt: skip
    assert code == 0, out
    doc = json.loads(report.read_text())
    assert doc["scenario"] == "cold" and doc["trace"]["requests"] == 600
    assert set(doc["policies"]) == {"distillery", "keda-tuned", "clairvoyant"}
    for name, result in doc["policies"].items():
        assert set(result) >= REPORT_KEYS, name
        assert result["replicas"][0][1] == 1, name  # cold: every policy starts at one
    assert "VS CLAIRVOYANT" in out and "keda-tuned" in out


def test_simulate_refuses_bad_names_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--trace", str(tmp_path / "none.csv"), "--format", "csv",
            "--gpu", "nvidia-l40s"]  # fmt: skip
    code, _ = run(*args, "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "--policy", "hpa")
    assert code == 2
    err = capsys.readouterr().err
    assert "--policy: unknown 'hpa'" in err and "clairvoyant" in err
    code, _ = run(*args, "--model", "no-such/model")
    assert code == 2
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" in capsys.readouterr().err


def exit_code(*args: str) -> int:
    """main()'s code, including argparse's own exit for a bad flag value."""
    try:
        return main(list(args), out=io.StringIO())
    except SystemExit as exc:
        return int(exc.code or 0)


RECOMMEND = ["recommend", "--floor", "aime2024=50", "--simulate-top", "0"]


BAD_RECOMMEND_FLAGS = [
    (["--peak-rps", "-1"], "argument --peak-rps: must be a number > 0 (got -1)"),
    (["--peak-rps", "0"], "argument --peak-rps: must be a number > 0 (got 0)"),
    (["--peak-rps", "nan"], "argument --peak-rps: must be a number > 0"),
    (["--tiers", "1.5"], "argument --tiers: must be a number > 0 and < 1"),
    (["--tiers", "0.2"], "--tiers needs --hard-floor"),
    (["--mean-rps", "3"], "--mean-rps 3 exceeds --peak-rps 2"),
    (["--input-tokens", "0"], "argument --input-tokens: must be an integer >= 1"),
    (["--quant-penalty", "fp8=2"], "--quant-penalty 'fp8=2': the number must be >= 0 and < 1"),
    (["--floor", "aime2024"], "--floor 'aime2024': expected NAME=NUMBER"),
    (["--gpu-type", "nvidia-b300"], "--gpu-type nvidia-b300: not in the catalog"),
    (["--hard-floor", "aime2024=70"], "--hard-floor only applies with --tiers"),
    (["--tiers", "0.2", "--hard-floor", "aime2024=40"], "a hard floor above the routine ones"),
]


@pytest.mark.parametrize("extra,message", BAD_RECOMMEND_FLAGS)
def test_recommend_refuses_bad_values_naming_the_flag(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    peak = [] if extra[0] == "--peak-rps" else ["--peak-rps", "2"]
    code = exit_code(*RECOMMEND, *peak, *extra)
    assert code in (1, 2) and message in capsys.readouterr().err
    if "hard floor above" not in message:  # the one refused by the tier search, not a flag
        assert code == 2


def test_recommend_lists_unscored_models_and_takes_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(*RECOMMEND, "--peak-rps", "2")
    assert code == 0
    assert "QwQ-32B none: no quality scores in the table: add your own evaluation" in out
    scores = tmp_path / "q.yaml"
    scores.write_text("models:\n  Qwen/QwQ-32B: {aime2024: 79.5}\n")
    code, out = run(*RECOMMEND, "--peak-rps", "2", "--quality", str(scores), "-o", "json")
    doc = json.loads(out)
    qwq = [c for c in doc["candidates"] if c["model"] == "Qwen/QwQ-32B"]
    assert code == 0 and qwq and "no quality scores" not in str(qwq)
    assert any(c["scores"].get("aime2024") == 79.5 for c in qwq)


def test_recommend_tiers_follow_the_output_format() -> None:
    args = [*RECOMMEND, "--peak-rps", "2", "--tiers", "0.2", "--hard-floor", "aime2024=70"]
    code, out = run(*args)
    assert code == 0 and out.startswith("TIER") and "routine" in out and "one model for all" in out
    code, out = run(*args, "-o", "yaml")
    doc = yaml.safe_load(out)
    assert code == 0 and doc["hardShare"] == 0.2 and doc["currency"] == "USD"
    # The hard tier clears the hard floor and the routine one.
    assert doc["hard"]["scores"]["aime2024"] >= 70 and doc["routine"]["scores"]["aime2024"] >= 50
    assert json.loads(run(*args, "-o", "json")[1]) == doc


def test_recommend_tiers_emits_both_dmds_and_the_route_that_render(tmp_path: Path) -> None:
    args = [*RECOMMEND, "--peak-rps", "2", "--tiers", "0.2", "--hard-floor", "aime2024=70"]
    code, out = run(*args, "--name", "r1", "--budget", "60", "--manifest", "-")
    docs = list(yaml.safe_load_all(out))
    assert code == 0 and [d["kind"] for d in docs] == [
        "DistilledModelDeployment",
        "DistilledModelDeployment",
        "ReasoningRoute",
    ]
    routine, hard, route = docs
    assert [t["deployment"] for t in route["spec"]["tiers"]] == ["r1-routine", "r1-hard"]
    assert (routine["metadata"]["name"], hard["metadata"]["name"]) == ("r1-routine", "r1-hard")
    # The budget is the route's, shared: not each tier's as well.
    assert route["spec"]["budget"] == {"maxCostPerHour": 60.0}
    assert "maxCostPerHour" not in routine["spec"]["scaling"]
    f = tmp_path / "tiers.yaml"
    f.write_text(out)
    code, names = run("render", str(f), "-o", "name")
    assert code == 0 and "inferencepool/r1-routine" in names and "httproute/r1" not in names


def auto_manifest(tmp_path: Path, name: str = "auto-7b", **spec: object) -> Path:
    f = tmp_path / f"{name}.yaml"
    body = {"model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}, **spec}
    f.write_text(dmd_yaml(name, body))
    return f


def test_plan_groups_alternatives_and_lists_all_on_request(tmp_path: Path) -> None:
    f = auto_manifest(tmp_path, placement={"gpuTypes": ["auto"]})
    [doc] = json.loads(run("plan", str(f), "-o", "json")[1])
    every = len(doc["alternatives"])
    code, grouped = run("plan", str(f))
    rows = grouped.split("WHY NOT", 1)[1].strip().splitlines()
    shown = [r for r in rows if not r.strip().startswith("(")]
    assert code == 0 and every > 2 * len(shown)
    assert f"({every - len(shown)} more rows like these: --all lists every option)" in grouped
    # One row per GPU type and quantization, each a different pair.
    pairs = {tuple(r.split()[:2]) for r in shown}
    assert len(pairs) == len(shown)
    code, full = run("plan", str(f), "--all")
    assert code == 0 and "--all lists" not in full
    assert len(full.split("WHY NOT", 1)[1].strip().splitlines()) == every
    code, wide = run("plan", str(f), "-o", "wide")
    assert code == 0 and "KV TOKENS" in wide and "USD/MTOK" in wide


def test_plan_reads_folders_dash_f_and_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auto_manifest(tmp_path, "a")
    auto_manifest(tmp_path, "b")
    (tmp_path / "notes.txt").write_text("not a manifest")
    code, out = run("plan", str(tmp_path), "-o", "name")
    assert code == 0
    assert out.splitlines() == [
        "distilledmodeldeployment.distillery.dev/a",
        "distilledmodeldeployment.distillery.dev/b",
    ]
    code, out = run("plan", "-f", str(tmp_path / "a.yaml"), "-o", "yaml")
    assert code == 0 and [d["name"] for d in yaml.safe_load(out)] == ["a"]
    monkeypatch.setattr("sys.stdin", io.StringIO((tmp_path / "b.yaml").read_text()))
    code, out = run("plan", "-f", "-", "-o", "json")
    assert code == 0 and [d["name"] for d in json.loads(out)] == ["b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert exit_code("plan", str(empty)) == 1
    assert exit_code("plan") == 2


CANARY = ROOT / "examples" / "rollouts" / "canary-r1-qwen-7b.yaml"


def test_render_leaves_the_namespace_to_kubectl_unless_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = auto_manifest(tmp_path, placement={"gpuTypes": ["nvidia-l40s"]})
    code, out = run("render", str(f))
    objects = list(yaml.safe_load_all(out))
    assert code == 0 and objects
    assert all("namespace" not in o["metadata"] for o in objects)
    code, out = run("render", str(f), "-n", "team-a")
    assert all(o["metadata"]["namespace"] == "team-a" for o in yaml.safe_load_all(out))
    monkeypatch.setenv("DISTILLERY_IMAGE_VLLM", "registry.example/vllm:env")
    monkeypatch.setenv("DISTILLERY_CACHE_STORAGE_CLASS", "fast-rwx")
    code, out = run("render", str(f), "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["kind"] == "List"
    [deployment] = [o for o in doc["items"] if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/vllm:env"
    # The operator's default StorageClass for weight caches (the manifest names none).
    cached = auto_manifest(
        tmp_path,
        "cached-7b",
        model={"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "cache": {"mode": "Shared"}},
        placement={"gpuTypes": ["nvidia-l40s"]},
    )
    code, out = run("render", str(cached), "-o", "json")
    [claim] = [o for o in json.loads(out)["items"] if o["kind"] == "PersistentVolumeClaim"]
    assert code == 0 and claim["spec"]["storageClassName"] == "fast-rwx"
    code, out = run("render", str(f), "--image", "vllm=registry.example/vllm:flag")
    assert "registry.example/vllm:flag" in out and "vllm:env" not in out
    assert exit_code("render", str(f), "--image", "vlm=x") == 2


USER_TEMPLATE = ROOT / "examples" / "templates" / "pod-overrides.yaml"


def test_render_takes_the_template_configmap_from_the_manifests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/templates.md's example, rendered as the operator would: the ConfigMap in the
    same file supplies the template; --user-template overrides it; a missing one is named."""
    code, out = run("render", str(USER_TEMPLATE))
    assert code == 0
    [dep] = [o for o in yaml.safe_load_all(out) if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"]["gpu"] == "1xnvidia-l40s"
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(containers) == {"engine", "log-shipper"}
    env = {e["name"]: e.get("value") for e in containers["engine"]["env"]}
    assert env["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert {"key": "reserved-for", "operator": "Equal", "value": "reasoning",
            "effect": "NoSchedule"} in pod["spec"]["tolerations"]  # fmt: skip
    # The file given on the command line wins over the ConfigMap.
    override = tmp_path / "pod.yaml.j2"
    override.write_text("metadata: {annotations: {team: '{{ dmd.name }}'}}\n")
    code, out = run("render", str(USER_TEMPLATE), "--user-template", f"r1-qwen-7b-pod={override}")
    [dep] = [o for o in yaml.safe_load_all(out) if o["kind"] == "Deployment"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert code == 0 and annotations["team"] == "r1-qwen-7b-custom" and "gpu" not in annotations
    # Only the DMD: the ConfigMap is not there, and the message says what to do.
    docs = list(yaml.safe_load_all(USER_TEMPLATE.read_text()))
    lone = tmp_path / "dmd.yaml"
    lone.write_text(yaml.safe_dump(docs[1]))
    capsys.readouterr()
    assert run("render", str(lone))[0] == 1
    err = capsys.readouterr().err
    assert "ConfigMap r1-qwen-7b-pod is not in the manifests given" in err, err
    assert "--user-template r1-qwen-7b-pod=FILE" in err
    # A template that changes what distillery owns is refused with the reason.
    owned = tmp_path / "owned.yaml.j2"
    owned.write_text("spec: {containers: [{name: engine, args: [--evil]}]}\n")
    assert run("render", str(lone), "--user-template", f"r1-qwen-7b-pod={owned}")[0] == 1
    assert "changes the engine container's args" in capsys.readouterr().err


def test_render_prints_the_canary_route_objects() -> None:
    code, out = run("render", str(CANARY), "-o", "name")
    assert code == 0
    names = out.splitlines()
    assert "httproute/r1-qwen-7b" in names or any(n.startswith("httproute/") for n in names)
    assert sum(n.startswith("service/") for n in names) >= 3  # the Service and one per track
    code, out = run("render", str(CANARY), "-o", "name", "--no-http-route")
    assert code == 0 and not any(n.startswith("httproute/") for n in out.splitlines())


SIM = ["simulate", "--format", "csv", "--policy", "distillery,clairvoyant", "--no-progress"]


def small_trace(tmp_path: Path) -> Path:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "timestamp_s,input_tokens,output_tokens\n"
        + "".join(f"{i * 2.0},{600 + i % 50},{150}\n" for i in range(150))
    )
    return trace


def test_simulate_takes_a_dmd_and_prints_formats(tmp_path: Path) -> None:
    trace = small_trace(tmp_path)
    f = auto_manifest(
        tmp_path,
        placement={"gpuTypes": ["nvidia-l40s"]},
        scaling={"maxReplicas": 2, "slo": {"ttftSeconds": 1.5}},
    )
    heavy = ["--trace", str(trace), "--rate-scale", "30"]
    code, out = run(*SIM, *heavy, "-f", str(f), "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["gpu"] == "nvidia-l40sx1" and doc["slo"]["ttftSeconds"] == 1.5
    assert set(doc["policies"]) == {"distillery", "clairvoyant"}
    assert doc["policies"]["distillery"]["peakReplicas"] <= 2  # the DMD's maxReplicas
    code, out = run(
        *SIM, *heavy, "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "--gpu", "nvidia-l40s",
        "-o", "json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["policies"]["distillery"]["peakReplicas"] > 2
    code, out = run(*SIM, "--trace", str(trace), "-f", str(f), "--slo-ttft", "3", "-o", "name")
    assert code == 0 and out.splitlines() == ["distillery", "clairvoyant"]


def test_simulate_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = small_trace(tmp_path)
    assert exit_code(*SIM, "--trace", str(trace)) == 2
    assert "--model and --gpu, or give -f" in capsys.readouterr().err
    model = ["--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    assert exit_code(*SIM, "--trace", str(trace), *model, "--gpu", "nvidia-b300") == 2
    assert "--gpu 'nvidia-b300' is not in the catalog: one of" in capsys.readouterr().err
    assert exit_code(*SIM, "--trace", str(trace), *model, "--gpu", "nvidia-l4", "--dt", "0") == 2
    assert "argument --dt: must be a number > 0" in capsys.readouterr().err
    azure = ROOT / "benchmarks" / "traces" / "azure-2023-code.csv"
    code = exit_code(*SIM, "--trace", str(azure), *model, "--gpu", "nvidia-l4")
    err = capsys.readouterr().err
    assert code == 1 and "azure-2023-code.csv:2: not a csv trace: no field 'timestamp_s'" in err
    assert "is --format csv right?" in err and "TIMESTAMP" in err


def test_run_without_a_cluster_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
                "users": [{"name": "u", "user": {"token": "do-not-print-me"}}],
            }
        )
    )
    assert exit_code("run", "--kubeconfig", str(kubeconfig), "--metrics-port", "0") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the API server at https://127.0.0.1:1" in err
    assert "do-not-print-me" not in err
    assert exit_code("run", "--kubeconfig", str(tmp_path / "missing")) == 1
    assert "no Kubernetes credentials" in capsys.readouterr().err
    assert exit_code("run", "--metrics-port", "70000") == 2


def test_run_refuses_contradictory_settings_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A renew deadline past the lease would let a cut-off leader act beside its successor.
    args = ["run", "--leader-election", "--leader-election-renew-deadline-seconds", "20"]
    assert exit_code(*args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "retry period < renew deadline < lease" in err
    assert "(got 2 < 20 < 15 s)" in err and "Traceback" not in err
    monkeypatch.setenv("DISTILLERY_PEERING", "distillery")
    assert exit_code("run", "--leader-election") == 1
    assert "set one" in capsys.readouterr().err


def test_readme_example_row_is_what_the_planner_chooses(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    f = tmp_path / "readme-dmd.yaml"
    f.write_text(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    [doc] = json.loads(run("plan", str(f), "-o", "json")[1])
    row = readme.split("$ kubectl get dmd\n", 1)[1].splitlines()[1].split()
    gpu = f"{doc['placement']['gpuType']}x{doc['placement']['gpuCount']}"
    assert row[2] == gpu and float(row[5]) == round(doc["costPerReplicaHour"], 2), row


def test_every_setting_is_a_run_flag_and_documented() -> None:
    from distillery.cli import build_parser
    from distillery.settings import Settings

    ops = (ROOT / "docs" / "operations.md").read_text()
    assert Settings.markdown() in ops, "docs/operations.md is stale: run make generate"
    parser = build_parser()
    for name, info in Settings.model_fields.items():
        flag = Settings.flag(name)
        if info.annotation is bool:
            args = parser.parse_args(["run", flag])
            assert getattr(args, name) is True, name
            continue
        value = "DEBUG" if name == "log_level" else "true" if name == "pod_monitor" else "7"
        args = parser.parse_args(["run", flag, value])
        got = getattr(args, name)
        assert (got[0] if isinstance(got, list) else str(got)).startswith(value), name


def test_usr2_logs_the_allocators_and_ends_the_report(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """How a running operator says where its memory is (docs/operations.md): the
    benchmark reads the report up to its last line."""
    import os
    import signal

    from distillery.cli import MEMORY_REPORT_END, _log_memory_on_sigusr2, c_heap_figures

    before = signal.getsignal(signal.SIGUSR2)
    try:
        _log_memory_on_sigusr2()
        with caplog.at_level("WARNING", logger="distillery"):
            os.kill(os.getpid(), signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert "# bytes in allocated blocks" in capfd.readouterr().err  # Python's arenas
    logged = caplog.text
    assert "C heap: {'inUseMiB'" in logged
    assert logged.rstrip().endswith(MEMORY_REPORT_END)
    figures = c_heap_figures()  # glibc here, as in the operator image
    assert set(figures) == {"inUseMiB", "freeMiB", "mappedMiB"}
    assert figures["inUseMiB"] > 0
