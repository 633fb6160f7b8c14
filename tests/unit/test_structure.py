"""The package's shape, checked: what a new maintainer relies on finding."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "distillery"
MAX_STATEMENTS = 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_says_what_it_owns() -> None:
    missing = [
        str(p.relative_to(PACKAGE))
        for p in modules()
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert not missing, f"modules without a docstring: {missing}"


def test_init_files_only_re_export() -> None:
    """Logic lives in named modules; an ``__init__.py`` holds a docstring, imports and
    ``__all__``."""
    offenders = []
    for path in PACKAGE.rglob("__init__.py"):
        for node in ast.parse(path.read_text()).body[1:]:
            if isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = [getattr(t, "id", None) for t in getattr(node, "targets", [])]
            if isinstance(node, ast.Assign) and targets in (["__all__"], ["__version__"]):
                continue
            offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, f"logic in __init__.py: {offenders}"


def _status_wire_names() -> set[str]:
    """The camelCase names of every field in the DMD's status, nested models included."""
    import typing

    from pydantic import BaseModel

    from distillery.api.types import DistilledModelDeploymentStatus

    names: set[str] = set()
    todo: list[type[BaseModel]] = [DistilledModelDeploymentStatus]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
            stack: list[object] = [info.annotation]
            while stack:
                hint = stack.pop()
                stack.extend(typing.get_args(hint))
                if isinstance(hint, type) and issubclass(hint, BaseModel):
                    todo.append(hint)
    return {n for n in names if n != n.lower()}


def test_status_is_built_from_the_models() -> None:
    """The controllers and the pure decisions they call never spell a status field's
    wire name as a dict key: status is built from ``api.types`` and serialised once."""
    wire = _status_wire_names()
    assert {"observedGeneration", "stableRevision", "lastTransitionTime"} <= wire
    writers = [
        *(PACKAGE / "reconcile").glob("*.py"),
        *(PACKAGE / "rollout").glob("*.py"),
        *(PACKAGE / "kube").glob("*.py"),
        PACKAGE / "api" / "conditions.py",
    ]
    offenders = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {key.value}"
        for path in writers
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and key.value in wire
    ]
    assert not offenders, f"status fields written as dict keys: {offenders}"
