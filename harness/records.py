"""Runs written straight into a store, for tests and benchmarks that need runs without running
them, and what the store's paging tests watch (the statements it sends, the first pages)."""

from __future__ import annotations

from typing import Any

import peewee

from wes_gateway import store


def record_run(
    owner: str = "",
    tags: dict[str, str] | None = None,
    workflow_url: str = "x.cwl",
    workflow_type: str = "CWL",
    version: str = "v1.2",
    **fields: Any,
) -> str:
    """A run straight into the open store, as a submission records it, then with ``fields``
    (state, times...) set: for tests that need runs without running them."""
    run_id = store.new_run_id()
    store.create_run(
        store.NewRun(
            run_id=run_id,
            owner=owner,
            workflow_type=workflow_type,
            request={"workflow_url": workflow_url, "workflow_type": workflow_type, "workflow_type_version": version},
            engine_args=[],
            workflow_path="/x",
            tags=tags or {},
        )
    )
    if fields:
        store.Run.update(**fields).where(store.Run.run_id == run_id).execute()
    return run_id


def bulk_runs(count: int, owner_of: Any = lambda n: "") -> None:
    """``count`` finished runs in a few statements (no events, no tags), oldest first."""
    rows = [
        {
            "run_id": store.new_run_id(),
            "owner": owner_of(n),
            "state": store.COMPLETE,
            "workflow_type": "CWL",
            "request": {"workflow_url": "x.cwl"},
            "engine_args": [],
            "workflow_path": "/x",
            "tags": {},
            "submitted_at": store.utc_now(),
        }
        for n in range(count)
    ]
    with store.write_transaction():
        for start in range(0, count, 500):
            store.Run.insert_many(rows[start : start + 500]).execute()


def statements(db: peewee.Database, monkeypatch: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """Every statement the store sends from now on, as sent (``monkeypatch``: pytest's, which
    puts ``execute_sql`` back at the test's end)."""
    sent: list[tuple[str, tuple[Any, ...]]] = []
    original = db.execute_sql

    def spy(sql: str, params: Any = None, commit: Any = None) -> Any:
        sent.append((sql, tuple(params or ())))
        return original(sql, params)

    monkeypatch.setattr(db, "execute_sql", spy)
    return sent


FIRST_PAGES = {
    "everyone's, newest first": (store.RunFilter(), False),
    "everyone's, oldest first": (store.RunFilter(), True),
    "a user's, newest first": (store.RunFilter(owner="alice"), False),
    "a user's, oldest first": (store.RunFilter(owner="alice"), True),
}
