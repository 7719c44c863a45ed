"""Workflow languages: how to validate a submission, start its Toil leader and read its tasks.

A language is one module with an Engine (see base.Engine) and one line in ENGINES."""

from __future__ import annotations

from .base import Engine, LeaderSpec, toil_argv
from .cwl import CwlEngine
from .wdl import WdlEngine

ENGINES: dict[str, Engine] = {engine.workflow_type: engine for engine in (CwlEngine(), WdlEngine())}


def engine_for(workflow_type: str) -> Engine | None:
    return ENGINES.get(workflow_type.upper())


__all__ = ["ENGINES", "Engine", "LeaderSpec", "engine_for", "toil_argv"]
