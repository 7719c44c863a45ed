"""Store: transitions, claims, keyset paging, the first schema's upgrade, counts, the first page
at any size (SQLite files, in process). Several processes at once: tests/e2e/test_store.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peewee
import pytest

from harness.records import FIRST_PAGES, bulk_runs, record_run, statements
from wes_gateway import store


def make_run(owner: str = "", tags: dict[str, str] | None = None) -> str:
    return record_run(owner=owner, tags=tags)


def test_wal_and_busy_timeout(db: peewee.Database) -> None:
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 10000


def test_upgrade_is_idempotent(db: peewee.Database) -> None:
    assert store.current_version(db) == store.SCHEMA_VERSION
    assert store.upgrade(db) == []


def test_transitions_follow_the_table(db: peewee.Database) -> None:
    run_id = make_run()
    assert not store.transition(run_id, store.RUNNING)  # QUEUED cannot jump to RUNNING
    assert store.claim_next("w1", "host-a", 30).run_id == run_id
    assert store.transition(run_id, store.RUNNING)
    assert store.transition(run_id, store.COMPLETE, exit_code=0)
    run = store.get_run(run_id)
    assert run.state == store.COMPLETE and run.end_time is not None and run.lease_until is None
    for state in store.ALLOWED_FROM:
        assert not store.transition(run_id, state), f"terminal COMPLETE moved to {state}"


def test_claim_is_exclusive(db: peewee.Database) -> None:
    first, second = make_run(), make_run()
    assert store.claim_next("a", "host-a", 30).run_id == first
    assert store.claim_next("b", "host-a", 30).run_id == second
    assert store.claim_next("c", "host-a", 30) is None


def test_cancel_queued_is_immediate_and_running_goes_through_canceling(db: peewee.Database) -> None:
    queued = make_run()
    assert store.request_cancel(queued) == store.CANCELED
    running = make_run()
    store.claim_next("w", "host-a", 30)
    store.transition(running, store.RUNNING)
    assert store.request_cancel(running) == store.CANCELING
    assert store.cancel_requested(running)
    assert store.request_cancel(running) == store.CANCELING
    with pytest.raises(KeyError):
        store.request_cancel("missing")


def test_keyset_paging_is_newest_first_and_stable_under_inserts(db: peewee.Database) -> None:
    ids = [make_run() for _ in range(7)]
    seen: list[str] = []
    rows, token = store.list_runs(3, None)
    seen += [r.run_id for r in rows]
    make_run()  # a newer run must not shift the following pages
    while token:
        rows, token = store.list_runs(3, token)
        seen += [r.run_id for r in rows]
    assert seen == list(reversed(ids))


def test_bad_tokens(db: peewee.Database) -> None:
    for token in ("garbage", "!!!", store.encode_token(5)[:-2] + "zz", "a2V5OjE"):
        with pytest.raises(store.BadPageToken):
            store.list_runs(3, token)


def test_state_counts_and_lease_takeover(db: peewee.Database) -> None:
    run_id = make_run()
    store.claim_next("dead", "host-a", -1)  # a lease already expired
    assert store.state_counts() == {store.INITIALIZING: 1}
    taken = store.take_over_expired("alive", "host-a", 30)
    assert [r.run_id for r in taken] == [run_id] and taken[0].claimed_by == "alive"
    assert store.take_over_expired("other", "host-a", 30) == []


def test_another_host_waits_for_the_leader_heartbeat(db: peewee.Database) -> None:
    run_id = make_run()
    store.claim_next("a-supervisor", "host-a", -1)  # host A's supervisor died: its lease lapsed
    store.leader_started(run_id, "token-a", "host-a")  # ...but its leader beats on
    assert store.beat(run_id, "token-a")
    assert store.take_over_expired("b-supervisor", "host-b", 30) == []
    # Host A itself may take its own run back (and adopt the leader by pid).
    assert [r.run_id for r in store.take_over_expired("a-again", "host-a", -1)] == [run_id]
    # Once the heartbeat is older than a lease, host B may.
    store.Run.update(heartbeat_at=store.Run.heartbeat_at - 60).where(store.Run.run_id == run_id).execute()
    taken = store.take_over_expired("b-supervisor", "host-b", 30)
    assert [r.run_id for r in taken] == [run_id] and taken[0].host_id == "host-a"  # whose leader it was
    store.leader_started(run_id, "token-b", "host-b")
    # The old leader, should it come back, no longer owns the run.
    assert not store.beat(run_id, "token-a") and not store.leader_owns(run_id, "token-a")
    assert store.beat(run_id, "token-b") and store.leader_owns(run_id, "token-b")


def test_upgrade_from_the_first_schema_keeps_runs(tmp_path: Path) -> None:
    database = store.open_database(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    assert store.upgrade(database, to=1) == [1]
    database.execute_sql(
        "INSERT INTO run (run_id, owner, state, workflow_type, request, engine_args, workflow_path,"
        " params_path, tags, submitted_at, system_logs, cancel_requested, attempts)"
        " VALUES ('old', '', 'COMPLETE', 'CWL', '{}', '[]', '/x', '/p', '{}', '2026-01-01T00:00:00Z', '[]', 0, 1)"
    )
    assert store.current_version(database) == 1
    assert store.upgrade(database) == list(range(2, store.SCHEMA_VERSION + 1))
    run = store.get_run("old")
    assert run.state == "COMPLETE" and run.bus_offset == 0
    assert store.Task.select().count() == 0


def test_state_counts_follow_every_change(db: peewee.Database) -> None:
    def truth(owner: str | None = None) -> dict[str, int]:
        query = store.Run.select(store.Run.state, peewee.fn.COUNT(store.Run.id).alias("n"))
        if owner is not None:
            query = query.where(store.Run.owner == owner)
        return {row.state: row.n for row in query.group_by(store.Run.state)}

    ids = [make_run(owner=f"u{i % 3}") for i in range(12)]
    store.claim_next("w", "host-a", 30)
    store.transition(ids[0], store.RUNNING)
    store.transition(ids[0], store.COMPLETE)
    store.request_cancel(ids[5])
    store.transition(ids[6], store.SYSTEM_ERROR)
    store.Run.delete().where(store.Run.run_id == ids[7]).execute()
    assert store.state_counts() == truth()
    for owner in ("u0", "u1", "u2", "nobody"):
        assert store.state_counts(owner) == truth(owner)


def test_system_log_appends_in_place(db: peewee.Database) -> None:
    run_id = make_run()
    for line in ("first", 'quoted "second", with [brackets]', "third ü"):
        store.append_system_log(run_id, line)
    assert store.get_run(run_id).system_logs == ["first", 'quoted "second", with [brackets]', "third ü"]


# ---------------------------------------------------------------- the first page at any size (#38)


def test_the_first_page_walks_an_index_and_never_scans_the_table(
    db: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite prints "SCAN" for a walk of the whole table; the first page must be the range
    # search that every later page is (SEARCH on the primary key, or on (owner, id)), in the
    # index's order: no temporary b-tree that sorts every match.
    bulk_runs(2000, lambda n: "alice" if n % 3 == 0 else f"user{n % 7}")
    sent = statements(db, monkeypatch)
    for name, (where, ascending) in FIRST_PAGES.items():
        sent.clear()
        rows, token = store.list_runs(100, None, where, ascending=ascending)
        assert len(rows) == 100 and token, name
        (sql, params) = next((s, p) for s, p in sent if s.startswith("SELECT"))
        plan = [row[3] for row in db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params)]
        assert plan and all(step.startswith("SEARCH") for step in plan), (name, plan)
        assert not any("TEMP B-TREE" in step for step in plan), (name, plan)
        assert any("PRIMARY KEY" in step or "owner_id" in step for step in plan), (name, plan)


def _work(db: peewee.Database, fn: Any) -> int:
    """SQLite's own measure of the work a call makes: virtual-machine steps, in hundreds."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    connection = db.connection()
    connection.set_progress_handler(count, 100)
    try:
        fn()
    finally:
        connection.set_progress_handler(None, 0)
    return steps[0]


def test_the_first_page_costs_the_same_in_a_store_ten_times_larger(db: peewee.Database) -> None:
    # Not timed: counted in SQLite's VM steps, which no other load on the machine changes.
    def owner_of(n: int) -> str:
        return "alice" if n % 3 == 0 else f"user{n % 7}"

    def costs() -> dict[str, int]:
        return {
            name: _work(db, lambda w=where, a=ascending: store.list_runs(100, None, w, ascending=a))
            for name, (where, ascending) in FIRST_PAGES.items()
        }

    bulk_runs(1000, owner_of)
    small = costs()
    bulk_runs(9000, owner_of)
    large = costs()
    for name in FIRST_PAGES:
        assert large[name] <= small[name] * 1.2 + 5, (name, small[name], large[name])
