"""What happened to a run, in order: the rows behind GET /runs/{id}/events."""

from __future__ import annotations

from typing import Any

from wes_gateway.store.schema import RunEvent


def record_event(run_id: str, kind: str, data: dict[str, Any]) -> None:
    RunEvent.create(run_id=run_id, kind=kind, data=data)


def event_count(run_id: str) -> int:
    """How many events the run has: the number of the last (they are numbered from 1)."""
    return int(RunEvent.select().where(RunEvent.run_id == run_id).count())


def events_after(run_id: str, after: int, limit: int = 500) -> list[RunEvent]:
    """The run's events after its ``after``-th (events are never removed one by one, so a
    run's numbering never changes)."""
    query = RunEvent.select().where(RunEvent.run_id == run_id)
    return list(query.order_by(RunEvent.id).offset(max(0, after)).limit(limit))
