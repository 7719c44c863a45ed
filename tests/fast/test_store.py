"""Store: transitions, claims, keyset paging, the first schema's upgrade, several processes at
once, the WAL kept bounded (SQLite files, no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peewee
import pytest

from wes_gateway import store

from .store_helpers import record_run


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


def _writer(path: str, worker: int, count: int) -> int:
    database = store.open_database(f"sqlite:///{path}")
    for _ in range(count):
        run_id = make_run(owner=f"w{worker}")
        # A read-then-write transaction, as task ingestion does: the pattern SQLite fails
        # with "database is locked" unless the write lock is taken up front.
        with store.write_transaction():
            if store.Task.get_or_none(store.Task.run_id == run_id) is None:
                store.Task.create(run_id=run_id, task_id="t", job_id="j", name="n")
        store.request_cancel(run_id)
        claimed = store.claim_next(f"sup{worker}", "host-a", 30)
        if claimed is not None:
            store.transition(claimed.run_id, store.RUNNING)
            store.renew_lease(claimed.run_id, f"sup{worker}", 30)
            store.transition(claimed.run_id, store.COMPLETE, exit_code=0)
    database.close()
    return count


def test_four_processes_writing_at_once(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "busy.sqlite3"
    database = store.open_database(f"sqlite:///{path}")
    store.upgrade(database)
    database.close()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        done = pool.starmap(_writer, [(str(path), worker, 40) for worker in range(4)])
    assert sum(done) == 160
    store.open_database(f"sqlite:///{path}")
    assert store.Run.select().count() == 160
    # A run cancelled after another process claimed it stays CANCELING (its supervisor would
    # finish it); every other run reached a terminal state, and no write was lost or refused.
    unfinished = list(store.Run.select().where(store.Run.state.not_in(list(store.TERMINAL))))
    assert all(run.state == store.CANCELING and run.cancel_requested for run in unfinished)


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


def _limited_creator(path: str, attempts: int) -> int:
    database = store.open_database(f"sqlite:///{path}")
    created = 0
    for _ in range(attempts):
        try:
            store.create_run(
                store.NewRun(
                    run_id=store.new_run_id(),
                    owner="u",
                    workflow_type="CWL",
                    request={"workflow_url": "x.cwl"},
                    engine_args=[],
                    workflow_path="/x.cwl",
                    tags={},
                ),
                max_active=4,
            )
            created += 1
        except store.LimitReached:
            pass
    database.close()
    return created


def test_active_run_limit_is_one_transaction_with_the_insert(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "limit.sqlite3"
    database = store.open_database(f"sqlite:///{path}")
    store.upgrade(database)
    database.close()
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        created = pool.starmap(_limited_creator, [(str(path), 3)] * 8)
    assert sum(created) == 4
    store.open_database(f"sqlite:///{path}")
    assert store.active_runs("u") == 4


def test_system_log_appends_in_place(db: peewee.Database) -> None:
    run_id = make_run()
    for line in ("first", 'quoted "second", with [brackets]', "third ü"):
        store.append_system_log(run_id, line)
    assert store.get_run(run_id).system_logs == ["first", 'quoted "second", with [brackets]', "third ü"]


# ---------------------------------------------------------------- the first page at any size (#38)


def _bulk_runs(count: int, owner_of: Any = lambda n: "") -> None:
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


def _statements(db: peewee.Database, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every statement the store sends from now on, as sent."""
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


def test_the_first_page_walks_an_index_and_never_scans_the_table(
    db: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite prints "SCAN" for a walk of the whole table; the first page must be the range
    # search that every later page is (SEARCH on the primary key, or on (owner, id)), in the
    # index's order: no temporary b-tree that sorts every match.
    _bulk_runs(2000, lambda n: "alice" if n % 3 == 0 else f"user{n % 7}")
    sent = _statements(db, monkeypatch)
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

    _bulk_runs(1000, owner_of)
    small = costs()
    _bulk_runs(9000, owner_of)
    large = costs()
    for name in FIRST_PAGES:
        assert large[name] <= small[name] * 1.2 + 5, (name, small[name], large[name])


def _wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


WAL_BOUND = 48 * 1024 * 1024  # three times the size at which a writer asks the log to start over


def _sustained_writer(path: str, runs: int) -> int:
    """Another process writing as the supervisor does, as fast as it can: a run, then its
    outputs; the largest the WAL was seen after a commit (it stops once past the bound)."""
    store.open_database(f"sqlite:///{path}")
    outputs = {"report": "x" * 60000}
    largest = 0
    for _ in range(runs):
        run_id = record_run()
        store.update_run(run_id, outputs=outputs)
        largest = max(largest, _wal_bytes(Path(path)))
        if largest > WAL_BOUND:
            break
    store.database.obj.close()
    return largest


def test_the_wal_stays_bounded_under_sustained_writes_with_readers_always_open(tmp_path: Path) -> None:
    # Readers always open, as web workers' requests overlap under load, each holding its
    # snapshot a few milliseconds: nobody keeps an old snapshot for long, yet the log is never
    # free of readers. SQLite's autocheckpoint alone then never starts the log over, and the
    # log grows with every write, each read a little slower.
    import multiprocessing
    import threading
    import time

    path = tmp_path / "wal.sqlite3"
    db = store.open_database(f"sqlite:///{path}")
    store.upgrade(db)
    _bulk_runs(2000)
    stop = threading.Event()
    reads = [0, 0, 0]

    def reader(me: int) -> None:
        while not stop.is_set():
            with db.atomic():  # BEGIN; the first SELECT takes the snapshot, COMMIT ends it
                store.list_runs(20, None)
                time.sleep(0.002)
            reads[me] += 1

    readers = [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for thread in readers:
        thread.start()
    try:
        # Some 80 MB of log traffic: past the bound, were nothing ever given back.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            largest = pool.apply(_sustained_writer, (str(path), 1300))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        db.close()
    assert min(reads) > 10, reads  # the readers were at it throughout
    assert largest <= WAL_BOUND, f"the WAL reached {largest / 2**20:.0f} MiB"
