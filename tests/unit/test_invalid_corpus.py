"""Every invalid manifest in the corpus is rejected by the API models, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from distillery.api.types import DistilledModelDeployment
from distillery.cli import format_validation_error
from tests.corpus import invalid_cases, manifest

CASES = invalid_cases()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_models_reject(case: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        DistilledModelDeployment.model_validate(manifest(case["name"], case["spec"]))
    text = format_validation_error(err.value, "x")
    # Model validators report on the object that holds the rule, so the field's parent
    # must be named; a field-level error names the field itself.
    parent = case["field"].split("[")[0].rsplit(".", 1)[0]
    assert parent in text, text
