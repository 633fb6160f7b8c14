"""Run the Argo CD health check (examples/gitops/argocd/health.lua) on a DMD object in
a real Lua runtime (lupa), as Argo CD would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import LuaRuntime

ARGOCD = Path(__file__).resolve().parents[1] / "examples" / "gitops" / "argocd"


def to_lua(lua: LuaRuntime, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval("function(obj) " + (ARGOCD / "health.lua").read_text() + "\nend")
    result = check(to_lua(lua, obj))
    return {"status": result["status"], "message": result["message"]}
