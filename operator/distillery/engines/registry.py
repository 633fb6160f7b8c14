"""Every engine distillery serves with, by name. Adding one: a module beside this one,
a line here, and its name in ``api.types.Engine`` (a test checks the two agree)."""

from __future__ import annotations

from collections.abc import Mapping

from distillery.engines import llamacpp, sglang, tgi, vllm
from distillery.engines.model import ServingEngine

ENGINES: Mapping[str, ServingEngine] = {
    e.name: e for e in (vllm.ENGINE, sglang.ENGINE, tgi.ENGINE, llamacpp.ENGINE)
}
