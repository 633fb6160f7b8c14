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
