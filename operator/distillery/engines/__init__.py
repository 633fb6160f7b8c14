"""Serving engines (pure): one record per engine (:mod:`.model`), one module per engine
(:mod:`.vllm`, :mod:`.sglang`, :mod:`.tgi`, :mod:`.llamacpp`), the registry
(:mod:`.registry`), and where a model's weights come from (:mod:`.source`).
"""

from distillery.engines.model import (
    PORT,
    AnalysisQueries,
    EngineInputs,
    EngineLaunch,
    EngineQueries,
    ServingEngine,
)
from distillery.engines.registry import ENGINES
from distillery.engines.source import SYNC_ARGV, ModelSource, SourceError

__all__ = [
    "ENGINES",
    "PORT",
    "SYNC_ARGV",
    "AnalysisQueries",
    "EngineInputs",
    "EngineLaunch",
    "EngineQueries",
    "ModelSource",
    "ServingEngine",
    "SourceError",
]
