"""`distillery plan` and `distillery crd` as a user runs them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from distillery.api.crd import crd_yaml
from distillery.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("deepseek-r1-distill-*.yaml"))
PLACEMENT_KEYS = {"gpuType", "gpuProduct", "gpuCount", "tensorParallel", "quantization"}
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
            assert alt["costPerReplicaHour"] >= doc["costPerReplicaHour"]


def test_plan_table_lists_alternatives() -> None:
    code, out = run("plan", str(ROOT / "examples" / "deepseek-r1-distill-qwen-32b.yaml"))
    assert code == 0
    assert "placement   2x nvidia-l40s" in out
    assert "WHY NOT" in out and "costs more" in out


def test_plan_nothing_fits_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "big.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "distillery.dev/v1alpha1",
                "kind": "DistilledModelDeployment",
                "metadata": {"name": "big"},
                "spec": {
                    "model": {
                        "name": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
                        "quantization": "none",
                    },
                    "placement": {"gpuTypes": ["nvidia-t4"]},
                },
            }
        )
    )
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
    assert code == 0 and out == crd_yaml()
    assert main(["crd", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "distillery.dev_distilledmodeldeployments.yaml").read_text() == out


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
