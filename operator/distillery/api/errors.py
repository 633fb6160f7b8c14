"""How a spec that fails validation is explained: one formatter for the CLI (a line per
problem) and the DMD's Stalled condition (the first few problems, on one line)."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(exc: ValidationError) -> list[str]:
    """``path: message`` per problem, the path spelled as a manifest spells it."""
    return [
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: "
        f"{err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    ]


def validation_summary(exc: ValidationError, limit: int = 5) -> str:
    """The first ``limit`` problems on one line, for a condition message."""
    return "; ".join(validation_problems(exc)[:limit])
