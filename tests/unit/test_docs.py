"""Docs that must match the code: the chart's values table, the settings the chart passes."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.dmds import dmd_yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "distillery"


def value_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the values a user sets: leaves, and maps meant to be filled."""
    paths: set[str] = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths |= value_paths(value, path + ".")
        else:
            paths.add(path)
    return paths


def test_chart_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    # A row names a value by its path or, for siblings, by `.leaf` after the first.
    named: set[str] = set()
    for row in table.splitlines():
        cell = row.split("|")[1]
        names = re.findall(r"`([^`]+)`", cell)
        head = names[0]
        named.add(head)
        parent = head.rsplit(".", 1)[0]
        for other in names[1:]:
            named.add(parent + other if other.startswith(".") else other)
    missing = sorted(
        p
        for p in value_paths(values)
        if p not in named and not any(p.startswith(n + ".") for n in named)
    )
    assert not missing, f"charts/distillery/README.md's values table lacks: {missing}"


def test_chart_schema_covers_every_value() -> None:
    """The schema refuses unknown keys: every key in values.yaml must be in it."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(values) == set(schema["properties"]), set(values) ^ set(schema["properties"])


def test_template_variables_documented_are_the_ones_given(tmp_path: Path) -> None:
    """Each variable docs/templates.md lists is defined when a template runs (undefined
    ones fail), so the table cannot name one that does not exist."""
    from distillery.cli import main

    doc = (ROOT / "docs" / "templates.md").read_text()
    section = doc.split("## What the template sees", 1)[1].split("##", 1)[0]
    names: list[str] = []
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        cell = re.findall(r"`([^`]+)`", row.split("|")[1])
        parent = cell[0].split(".")[0]
        names += [parent + n if n.startswith(".") else n for n in cell]
    assert {"dmd.name", "placement.gpuType", "engine", "labels"} <= set(names), names
    template = tmp_path / "t.yaml.j2"
    template.write_text(
        "metadata:\n  annotations:\n"
        + "".join(f"    v{i}: {{{{ ({n}) | string | tojson }}}}\n" for i, n in enumerate(names))
    )
    manifest = tmp_path / "dmd.yaml"
    spec = {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"},
        "serving": {"templateRef": {"name": "t"}},
    }
    manifest.write_text(dmd_yaml("t", spec))
    out = io.StringIO()
    assert main(["render", str(manifest), "--user-template", f"t={template}"], out=out) == 0
    [dep] = [d for d in yaml.safe_load_all(out.getvalue()) if d["kind"] == "Deployment"]
    seen = dep["spec"]["template"]["metadata"]["annotations"]
    assert seen[f"v{names.index('dmd.name')}"] == "t"
    assert seen[f"v{names.index('placement.gpuCount')}"] == "1"


def test_weight_cache_doc_lists_the_bandwidths_the_estimate_uses() -> None:
    from distillery.sizing.startup import LOAD_BYTES_PER_SECOND

    doc = (ROOT / "docs" / "weight-cache.md").read_text()
    rows = {
        scheme: cells[2].strip()
        for line in doc.splitlines()
        if line.startswith("| `")
        for cells in [line.split("|")]
        for scheme in re.findall(r"`(\w+)`", cells[1])
        if scheme in LOAD_BYTES_PER_SECOND
    }
    assert set(rows) == set(LOAD_BYTES_PER_SECOND), set(rows) ^ set(LOAD_BYTES_PER_SECOND)
    for scheme, shown in rows.items():
        number, unit = shown.split()
        factor = {"MB/s": 1e6, "GB/s": 1e9}[unit]
        assert float(number) * factor == LOAD_BYTES_PER_SECOND[scheme], scheme
