"""A JSON merge patch (RFC 7386) from the old document to the new one.

Status is written with merge patches. A key the new status no longer has must be sent as
null, or the API server keeps the old value: a rollout that moved to its next step kept
the previous step's ``stepStartedAt``, which ``kubectl`` showed and a restarted operator
took for the new step's start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_patch(old: Any, new: Any) -> Any:
    """The patch that turns ``old`` into ``new``: changed and new keys, and null for each
    key ``new`` lacks. Lists and scalars are replaced whole, as merge patches do."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(old[key], Mapping) and isinstance(value, Mapping):
            sub = merge_patch(old[key], value)
            if sub:
                patch[key] = sub
        elif old[key] != value:
            patch[key] = value
    return patch


def apply_merge_patch(doc: Any, patch: Any) -> Any:
    """What the API server does with a merge patch (for tests and for memory)."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(doc) if isinstance(doc, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out
