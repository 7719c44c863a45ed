"""Opening the database: the proxy every model is bound to, SQLite's pragmas and its
write-ahead log kept bounded, and write transactions that take the lock up front."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import peewee
from playhouse.db_url import connect as connect_url

log = logging.getLogger(__name__)

database = peewee.DatabaseProxy()

# SQLite's write-ahead log. Its autocheckpoint (PASSIVE, at 1,000 pages, about 4 MiB) copies
# pages back into the database, but the log only starts over from its beginning when a writer
# finds no reader in it; under steady reads (web workers) and steady writes (supervisor,
# leaders) that moment may never come, and the log grows without bound: 184 MB in 40 s with
# four readers and one writer that never pause. Past WAL_RESTART_BYTES a writer therefore
# asks for a RESTART checkpoint, which waits (at most WAL_RESTART_WAIT_MS) for the readers
# already in the log to finish while new ones read the database file; the next commit then
# writes from the log's beginning and cuts the file back to WAL_KEEP_BYTES.
WAL_KEEP_BYTES = 8 * 1024 * 1024
WAL_RESTART_BYTES = 16 * 1024 * 1024
WAL_RESTART_WAIT_MS = 250
BUSY_TIMEOUT_MS = 30000
_WAL_WARN_EVERY = 60.0  # seconds between warnings of a checkpoint that could not finish


class SqliteStore(peewee.SqliteDatabase):
    """Peewee's SQLite database, keeping its write-ahead log bounded (see WAL_RESTART_BYTES)."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.wal_path = f"{path}-wal"
        self._seen = threading.local()  # each thread has its own connection, and its own count
        self._warned_at = 0.0
        # After a checkpoint that could not finish, the next waits a while (0.1 s, doubling to
        # a minute): a connection that holds a snapshot must not cost every write the wait.
        self._pause = 0.0
        self._retry_at = 0.0

    def execute_sql(self, sql: str, params: Any = None, commit: Any = None) -> Any:
        cursor = super().execute_sql(sql, params)
        if not self.in_transaction():  # a write outside a transaction is committed now
            self._after_commit()
        return cursor

    def commit(self) -> Any:
        result = super().commit()
        self._after_commit()
        return result

    def _after_commit(self) -> None:
        conn = self._state.conn
        seen = (id(conn), int(conn.total_changes))
        if getattr(self._seen, "changes", None) == seen:  # a read: nothing was written
            return
        self._seen.changes = seen
        try:
            size = os.stat(self.wal_path).st_size
        except OSError:
            return
        if size > WAL_RESTART_BYTES and time.monotonic() >= self._retry_at:
            busy, _, _ = self.restart_wal()
            self._pause = min(max(2 * self._pause, 0.1), 60.0) if busy else 0.0
            self._retry_at = time.monotonic() + self._pause

    def restart_wal(self) -> tuple[int, int, int]:
        """A RESTART checkpoint: (busy, frames in the log, frames checkpointed), busy 1 when a
        reader kept its snapshot past the wait. Never raises: the write is done already."""
        conn = self._state.conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {WAL_RESTART_WAIT_MS}")
            try:
                busy, frames, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except Exception as exc:  # sqlite3.Error: locked by a statement of this connection
            log.debug("WAL checkpoint not run: %s", exc)
            return (1, -1, -1)
        if not busy:
            return (0, int(frames), int(done))
        # A busy moment (a writer, readers slower than the wait) passes; a log four times past
        # the mark means a connection has held one snapshot all along.
        try:
            stuck = os.stat(self.wal_path).st_size > 4 * WAL_RESTART_BYTES
        except OSError:
            stuck = False
        if stuck and time.monotonic() - self._warned_at > _WAL_WARN_EVERY:
            self._warned_at = time.monotonic()
            log.warning(
                "SQLite's write-ahead log %s has %d frames and cannot start over: a connection holds an old snapshot",
                self.wal_path,
                frames,
            )
        return (1, int(frames), int(done))


def open_database(url: str) -> peewee.Database:
    """Bind the proxy to the database at ``url`` and return it (not yet connected)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        db: peewee.Database = SqliteStore(
            path,
            pragmas={
                "journal_mode": "wal",
                # Several Gunicorn workers and the supervisor write at once; wait, don't fail.
                "busy_timeout": BUSY_TIMEOUT_MS,
                "synchronous": "normal",
                "foreign_keys": 1,
                # The log file is cut back to this whenever it starts over (else it keeps the
                # size of its largest transaction, or its longest starvation, for good).
                "journal_size_limit": WAL_KEEP_BYTES,
            },
            check_same_thread=False,
        )
    else:
        db = connect_url(url)
    database.initialize(db)
    return db


def write_transaction() -> Any:
    """A transaction that writes. On SQLite it takes the write lock up front (IMMEDIATE):
    a deferred one that reads first and then writes cannot wait for the lock, and fails with
    "database is locked" whenever another process wrote in between."""
    db = database.obj
    if isinstance(db, peewee.SqliteDatabase):
        return db.atomic(lock_type="IMMEDIATE")
    return db.atomic()
