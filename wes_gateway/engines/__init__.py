"""Workflow languages: how to validate a submission, start its Toil leader and read its tasks.

A language is one module with an Engine (see base.Engine) and one line in ENGINES."""

from __future__ import annotations

from wes_gateway.engines.base import Engine, LeaderSpec, toil_argv
from wes_gateway.engines.cwl import CwlEngine
from wes_gateway.engines.wdl import WdlEngine

ENGINES: dict[str, Engine] = {engine.workflow_type: engine for engine in (CwlEngine(), WdlEngine())}


def warm_validation() -> None:
    """Load what checking a submission loads, for every language and version, by checking a
    tiny document of each (Engine.warm_validation): Gunicorn's master does it before it forks
    the web workers, which then take their first submission warm, sharing those pages. A
    language that fails to warm is logged and left cold: its submissions still get checked."""
    import logging

    log = logging.getLogger(__name__)
    for engine in ENGINES.values():
        try:
            engine.warm_validation()
        except Exception:
            log.warning("could not warm the %s validation", engine.workflow_type, exc_info=True)


def toil_version() -> str:
    """The installed Toil's version: the one engine every language runs on."""
    from importlib.metadata import version

    return version("toil")


def engine_for(workflow_type: str) -> Engine | None:
    return ENGINES.get(workflow_type.upper())


__all__ = ["ENGINES", "Engine", "LeaderSpec", "engine_for", "toil_argv", "toil_version", "warm_validation"]
