"""A run's life in the store: created QUEUED, moved only along ALLOWED_FROM, cancelled.

Writes that race (claims, state changes, cancels) are single compare-and-set UPDATE
statements, so they are atomic on SQLite and PostgreSQL alike without explicit locking."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import peewee

from wes_gateway.store.db import database, write_transaction
from wes_gateway.store.events import record_event
from wes_gateway.store.schema import Run, RunTag, tag_digest
from wes_gateway.store.state import ACTIVE, ALLOWED_FROM, CANCELED, CANCELING, QUEUED, TERMINAL, State
from wes_gateway.store.times import utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewRun:
    run_id: str
    owner: str
    workflow_type: str
    request: dict[str, Any]
    engine_args: list[str]
    workflow_path: str
    tags: dict[str, str]


class LimitReached(Exception):
    """The owner already has as many queued or running runs as allowed."""


def new_run_id() -> str:
    return uuid.uuid4().hex


def create_run(new: NewRun, max_active: int = 0) -> Run:
    """Insert a QUEUED run; with ``max_active``, only if its owner has fewer active runs, checked
    in the same transaction so that simultaneous submissions cannot both pass."""
    with write_transaction():
        if max_active:
            if isinstance(database.obj, peewee.PostgresqlDatabase):
                # READ COMMITTED lets two counts miss each other's insert; serialise per owner.
                database.obj.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", (new.owner,))
            if active_runs(new.owner) >= max_active:
                raise LimitReached(new.owner)
        run: Run = Run.create(
            run_id=new.run_id,
            owner=new.owner,
            state=QUEUED,
            workflow_type=new.workflow_type,
            request=new.request,
            engine_args=new.engine_args,
            workflow_path=new.workflow_path,
            tags=new.tags,
            submitted_at=utc_now(),
        )
        if new.tags:
            RunTag.insert_many([{"run_pk": run.id, "digest": tag_digest(k, v)} for k, v in new.tags.items()]).execute()
        record_event(new.run_id, "state", {"state": QUEUED, "time": run.submitted_at})
        _notify_work()
        return run


# PostgreSQL's LISTEN/NOTIFY channel that tells every supervisor, on any host, of new work.
WORK_CHANNEL = "wes_gateway_work"


def _notify_work() -> None:
    # Inside the inserting transaction: delivered when (and only if) it commits.
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        database.obj.execute_sql(f"NOTIFY {WORK_CHANNEL}")


def listen_for_work() -> Any | None:
    """For PostgreSQL, a connection of its own that LISTENs on the work channel: its fileno()
    turns readable when a run is committed anywhere (``drain_work`` then clears it). None for
    SQLite, whose supervisor is woken on this host only (``wakeup``)."""
    db = database.obj
    if not isinstance(db, peewee.PostgresqlDatabase):
        return None
    import psycopg2
    import psycopg2.extensions

    connection = psycopg2.connect(database=db.database, **db.connect_params)
    connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    with connection.cursor() as cursor:
        cursor.execute(f"LISTEN {WORK_CHANNEL}")
    return connection


def drain_work(connection: Any) -> None:
    connection.poll()
    connection.notifies.clear()


def update_run(run_id: str, **fields: Any) -> None:
    """Set fields whatever the state (the state itself only ever moves through transition)."""
    assert "state" not in fields
    Run.update(**fields).where(Run.run_id == run_id).execute()


def get_run(run_id: str) -> Run | None:
    return cast("Run | None", Run.get_or_none(Run.run_id == run_id))


def get_run_state(run_id: str) -> tuple[str, str] | None:
    """(owner, state) of a run: all that a status poll, the hottest request, needs."""
    row = Run.select(Run.owner, Run.state).where(Run.run_id == run_id).tuples().first()
    return None if row is None else (row[0], row[1])


def transition(run_id: str, new_state: str, **fields: Any) -> bool:
    """Move ``run_id`` to ``new_state`` if the table allows it from its current state.

    Returns False (and changes nothing) when the run is not in a legal predecessor state,
    which is how terminal states stay terminal and concurrent writers stay consistent.
    """
    allowed = ALLOWED_FROM[State(new_state)]
    updates: dict[Any, Any] = {Run.state: new_state}
    for name, value in fields.items():
        updates[getattr(Run, name)] = value
    if new_state in TERMINAL:
        updates.setdefault(Run.end_time, utc_now())
        updates[Run.lease_until] = None
    query = Run.update(updates).where((Run.run_id == run_id) & (Run.state.in_(list(allowed))))
    with write_transaction():
        changed = bool(query.execute() == 1)
        if changed:
            record_event(run_id, "state", {"state": new_state, "time": utc_now()})
    if changed:
        log.info("run %s -> %s", run_id, new_state)
    return changed


def append_system_log(run_id: str, line: str) -> None:
    """One UPDATE that appends to the JSON list in place, like every other racing write."""
    item = json.dumps(line)
    text = Run.system_logs
    appended = peewee.Case(
        None,
        [(peewee.fn.LENGTH(text) <= 2, peewee.Value(f"[{item}]", converter=False))],
        peewee.fn.SUBSTR(text, 1, peewee.fn.LENGTH(text) - 1).concat(peewee.Value(f", {item}]", converter=False)),
    )
    Run.update({Run.system_logs: appended}).where(Run.run_id == run_id).execute()


def request_cancel(run_id: str) -> str:
    """Record a cancel; return the state the run is in afterwards."""
    for _ in range(5):
        run = get_run(run_id)
        if run is None:
            raise KeyError(run_id)
        if run.state in TERMINAL or run.state == CANCELING:
            return str(run.state)
        if run.state == QUEUED:
            if transition(run_id, CANCELED):
                return CANCELED
        elif transition(run_id, CANCELING, cancel_requested=True):
            return CANCELING
    # The run kept changing under us; whatever it is now is the honest answer.
    run = get_run(run_id)
    return run.state if run else CANCELED


def cancel_requested(run_id: str) -> bool:
    value = Run.select(Run.cancel_requested).where(Run.run_id == run_id).scalar()
    return bool(value)


def active_runs(owner: str) -> int:
    return int(Run.select().where((Run.owner == owner) & Run.state.in_([QUEUED, *ACTIVE])).count())


def iter_runs(states: Iterable[str]) -> list[Run]:
    return list(Run.select().where(Run.state.in_(list(states))).order_by(Run.id))


def ping() -> None:
    """Raises when the store cannot answer."""
    Run.select(Run.id).limit(1).execute()
