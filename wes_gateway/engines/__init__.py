"""Workflow languages: how to validate a submission and how to start its Toil leader."""

from __future__ import annotations

from .base import Engine, LeaderSpec, RunPaths
from .cwl import CwlEngine
from .wdl import WdlEngine

ENGINES: dict[str, Engine] = {engine.workflow_type: engine for engine in (CwlEngine(), WdlEngine())}


def engine_for(workflow_type: str) -> Engine | None:
    return ENGINES.get(workflow_type.upper())


__all__ = ["ENGINES", "Engine", "LeaderSpec", "RunPaths", "engine_for"]
