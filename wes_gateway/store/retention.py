"""Finished runs going away: tombstones (DELETE /runs/{id}) and records removed whole."""

from __future__ import annotations

from wes_gateway.store.db import write_transaction
from wes_gateway.store.schema import Run, RunEvent, RunTag, Task
from wes_gateway.store.state import COMPLETE, TERMINAL
from wes_gateway.store.times import utc_now


def finished_runs(ended_before: str | None = None, complete_any_time: bool = False) -> list[tuple[str, str]]:
    """(run_id, state) of finished runs that ended before the cutoff (COMPLETE ones whenever
    they ended, with ``complete_any_time``)."""
    ended = Run.end_time < ended_before if ended_before is not None else Run.end_time.is_null(False)
    if complete_any_time:
        ended = ended | (Run.state == COMPLETE)
    query = Run.select(Run.run_id, Run.state).where(Run.state.in_(list(TERMINAL)) & Run.end_time.is_null(False) & ended)
    return [(str(row.run_id), str(row.state)) for row in query]


def mark_deleted(run_id: str) -> bool:
    """Make a finished run a tombstone (once): no outputs, no tasks, the time of deletion.
    False if the run is not finished, or is a tombstone already."""
    with write_transaction():
        changed = (
            Run.update(deleted_at=utc_now(), outputs=None)
            .where((Run.run_id == run_id) & Run.state.in_(list(TERMINAL)) & Run.deleted_at.is_null())
            .execute()
        )
        if changed:
            Task.delete().where(Task.run_id == run_id).execute()
    return bool(changed)


def delete_run(run_id: str) -> None:
    """The run's record and its tasks, in one transaction."""
    with write_transaction():
        Task.delete().where(Task.run_id == run_id).execute()
        RunEvent.delete().where(RunEvent.run_id == run_id).execute()
        RunTag.delete().where(RunTag.run_pk.in_(Run.select(Run.id).where(Run.run_id == run_id))).execute()
        Run.delete().where(Run.run_id == run_id).execute()
