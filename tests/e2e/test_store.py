"""The store under several processes at once (SQLite files, no server): concurrent writers,
the per-owner limit in one transaction, and the write-ahead log kept bounded under steady reads
and writes. The store's in-process tests are tests/fast/test_store.py; these spawn processes
and move some 130 MB through the log, which the fast tier's budget has no room for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import record_run

from harness.records import bulk_runs
from wes_gateway import store


def make_run(owner: str = "", tags: dict[str, str] | None = None) -> str:
    return record_run(owner=owner, tags=tags)


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


def _eight_processes(path: Path, work: Callable[..., int], arguments: list[tuple[Any, ...]]) -> list[int]:
    """``work`` in 8 processes at once against a new SQLite store at ``path``, which is then
    opened again in this one; what each returned."""
    import multiprocessing

    database = store.open_database(f"sqlite:///{path}")
    store.upgrade(database)
    database.close()
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        done = pool.starmap(work, [(str(path), *args) for args in arguments])
    store.open_database(f"sqlite:///{path}")
    return done


def test_eight_processes_writing_at_once(tmp_path: Path) -> None:
    done = _eight_processes(tmp_path / "busy.sqlite3", _writer, [(worker, 60) for worker in range(8)])
    assert sum(done) == 480
    assert store.Run.select().count() == 480
    # A run cancelled after another process claimed it stays CANCELING (its supervisor would
    # finish it); every other run reached a terminal state, and no write was lost or refused.
    unfinished = list(store.Run.select().where(store.Run.state.not_in(list(store.TERMINAL))))
    assert all(run.state == store.CANCELING and run.cancel_requested for run in unfinished)


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
    created = _eight_processes(tmp_path / "limit.sqlite3", _limited_creator, [(3,)] * 8)
    assert sum(created) == 4
    assert store.active_runs("u") == 4


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
    bulk_runs(2000)
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
        # Some 130 MB of log traffic: well past the bound, were nothing ever given back.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            largest = pool.apply(_sustained_writer, (str(path), 2000))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        db.close()
    assert min(reads) > 10, reads  # the readers were at it throughout
    assert largest <= WAL_BOUND, f"the WAL reached {largest / 2**20:.0f} MiB"
