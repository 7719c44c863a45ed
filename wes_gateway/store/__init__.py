"""Peewee tables, schema migrations and every query the service makes.

Writes that race (claims, state changes, cancels) are single compare-and-set UPDATE
statements, so they are atomic on SQLite and PostgreSQL alike without explicit locking.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import peewee
from playhouse.db_url import connect as connect_url

log = logging.getLogger(__name__)

database = peewee.DatabaseProxy()

QUEUED = "QUEUED"
INITIALIZING = "INITIALIZING"
RUNNING = "RUNNING"
COMPLETE = "COMPLETE"
EXECUTOR_ERROR = "EXECUTOR_ERROR"
SYSTEM_ERROR = "SYSTEM_ERROR"
CANCELING = "CANCELING"
CANCELED = "CANCELED"

TERMINAL = frozenset({COMPLETE, EXECUTOR_ERROR, SYSTEM_ERROR, CANCELED})
ACTIVE = frozenset({INITIALIZING, RUNNING, CANCELING})

# The only legal moves. Everything that changes a run's state goes through transition(),
# which checks against this table inside the UPDATE itself.
ALLOWED_FROM: dict[str, frozenset[str]] = {
    QUEUED: frozenset({INITIALIZING}),  # re-queue of a run whose leader never started
    INITIALIZING: frozenset({QUEUED}),
    RUNNING: frozenset({INITIALIZING}),
    COMPLETE: frozenset({INITIALIZING, RUNNING}),
    EXECUTOR_ERROR: frozenset({INITIALIZING, RUNNING}),
    SYSTEM_ERROR: frozenset({QUEUED, INITIALIZING, RUNNING, CANCELING}),
    CANCELING: frozenset({INITIALIZING, RUNNING}),
    CANCELED: frozenset({QUEUED, INITIALIZING, RUNNING, CANCELING}),
}


# The one way the store writes a moment: UTC, to the second, as WES shows it.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(moment: datetime) -> str:
    """``moment`` (aware, any zone) as the store keeps and WES shows times."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_stamp(text: str) -> datetime | None:
    """A time the store wrote, or None if ``text`` is not one."""
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def utc_now() -> str:
    return stamp(datetime.now(UTC))


class JSONField(peewee.TextField):
    """JSON text in the database, Python values in code: no caller encodes or decodes."""

    def db_value(self, value: Any) -> Any:
        return None if value is None else json.dumps(value)

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database


class SchemaVersion(BaseModel):
    version = peewee.IntegerField()

    class Meta:
        table_name = "schema_version"


class Run(BaseModel):
    id = peewee.AutoField()
    run_id = peewee.CharField(max_length=64, unique=True)
    owner = peewee.CharField(max_length=255, default="")
    state = peewee.CharField(max_length=32, index=True)
    workflow_type = peewee.CharField(max_length=16)
    request = JSONField()  # the RunRequest echo
    engine_args = JSONField(default=list)  # validated engine flags
    workflow_path = peewee.TextField()  # what the leader is given: a local path or URL
    tags = JSONField(default=dict)
    submitted_at = peewee.CharField(max_length=32)
    start_time = peewee.CharField(max_length=32, null=True)
    end_time = peewee.CharField(max_length=32, null=True)
    exit_code = peewee.IntegerField(null=True)
    outputs = JSONField(null=True)
    cmd = JSONField(null=True)
    system_logs = JSONField(default=list)
    claimed_by = peewee.CharField(max_length=128, null=True)
    lease_until = peewee.DoubleField(null=True)  # epoch seconds: PostgreSQL's REAL keeps only ~2 minutes
    leader_pid = peewee.IntegerField(null=True)
    cancel_requested = peewee.BooleanField(default=False)
    bus_offset = peewee.BigIntegerField(default=0)  # bytes of messages.tsv already ingested
    host_id = peewee.CharField(max_length=255, null=True)  # the gateway host whose supervisor holds it
    leader_token = peewee.CharField(max_length=64, null=True)  # fences every leader but the current one
    heartbeat_at = peewee.DoubleField(null=True)  # renewed by the leader's launcher itself
    deleted_at = peewee.CharField(max_length=32, null=True)  # a tombstone: files gone, record kept

    class Meta:
        table_name = "run"
        indexes = ((("owner", "id"), False),)


class Task(BaseModel):
    """One Toil job that ran a workflow step, as read from the run's message bus."""

    id = peewee.AutoField()  # order of first appearance
    run_id = peewee.CharField(max_length=64)
    task_id = peewee.CharField(max_length=255)
    job_id = peewee.CharField(max_length=255)
    name = peewee.CharField(max_length=255)
    start_time = peewee.CharField(max_length=32, null=True)
    end_time = peewee.CharField(max_length=32, null=True)
    exit_code = peewee.IntegerField(null=True)
    cmd = JSONField(null=True)
    log_path = peewee.TextField(null=True)
    batch_id = peewee.IntegerField(null=True)
    batch_system = peewee.CharField(max_length=64, null=True)
    external_id = peewee.CharField(max_length=128, null=True)
    attempts = peewee.IntegerField(default=0)
    failed = peewee.BooleanField(default=False)
    node = peewee.CharField(max_length=255, null=True)  # the host it ran on, as the batch system says
    container = JSONField(null=True)  # the image it ran in: {"image", "id", "digest"} (containers.image_record)

    class Meta:
        table_name = "task"
        indexes = ((("run_id", "task_id"), True), (("run_id", "id"), False), (("run_id", "batch_id"), False))


class RunTag(BaseModel):
    """One tag of a run, for the tag filter: a digest of key and value, so that any length of
    either is one exact, indexable comparison; the index also orders by run."""

    run_pk = peewee.BigIntegerField()
    digest = peewee.CharField(max_length=40)

    class Meta:
        table_name = "run_tag"
        primary_key = False
        indexes = ((("digest", "run_pk"), False), (("run_pk",), False))


def tag_digest(key: str, value: str) -> str:
    return hashlib.sha1(f"{key}\0{value}".encode()).hexdigest()


class RunEvent(BaseModel):
    """What happened to a run, in order: state changes, task starts and ends. The id orders
    them; the event stream numbers them within their run (events_after), so that no client
    learns from its ids how busy the service is."""

    id = peewee.AutoField()
    run_id = peewee.CharField(max_length=64)
    kind = peewee.CharField(max_length=16)
    data = JSONField()

    class Meta:
        table_name = "run_event"
        indexes = ((("run_id", "id"), False),)


class LoginFailure(BaseModel):
    """A failed Basic login, by who tried from where: shared by every web worker."""

    id = peewee.AutoField()
    key = peewee.CharField(max_length=512)  # user and peer (auth.failure_key)
    at = peewee.DoubleField()  # epoch seconds

    class Meta:
        table_name = "login_failure"
        indexes = ((("key", "at"), False),)


class ApiToken(BaseModel):
    id = peewee.AutoField()
    user = peewee.CharField(max_length=255)
    token_hash = peewee.CharField(max_length=64, unique=True)
    label = peewee.CharField(max_length=255, default="")
    created_at = peewee.CharField(max_length=32)
    revoked_at = peewee.CharField(max_length=32, null=True)

    class Meta:
        table_name = "api_token"


class StateCount(BaseModel):
    """Runs per owner and state, kept by database triggers so service-info never scans runs."""

    owner = peewee.CharField(max_length=255)
    state = peewee.CharField(max_length=32)
    n = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "state_count"
        primary_key = peewee.CompositeKey("owner", "state")


# ---------------------------------------------------------------- connection & schema


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


def _migration_1(db: peewee.Database) -> None:
    # The first schema, frozen by name: fields added later arrive through later migrations.
    columns = [
        "id",
        "run_id",
        "owner",
        "state",
        "workflow_type",
        "request",
        "engine_args",
        "workflow_path",
        "params_path",
        "tags",
        "submitted_at",
        "start_time",
        "end_time",
        "exit_code",
        "outputs",
        "cmd",
        "system_logs",
        "claimed_by",
        "lease_until",
        "leader_pid",
        "cancel_requested",
        "attempts",
    ]

    class RunV1(peewee.Model):
        class Meta:
            database = db
            table_name = "run"

    dropped = {"params_path": peewee.TextField(), "attempts": peewee.IntegerField(default=0)}  # by migration 5
    for name in columns:
        field = Run._meta.fields.get(name)
        kind = peewee.TextField if isinstance(field, JSONField) else type(field)  # JSON is TEXT in the schema
        fresh = dropped[name] if field is None else kind(**_field_kwargs(field))
        RunV1._meta.add_field(name, fresh)
    RunV1._meta.indexes = [(("owner", "id"), False)]
    db.create_tables([RunV1])


def _field_kwargs(field: peewee.Field) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "null": field.null,
        "index": field.index,
        "unique": field.unique,
        "primary_key": field.primary_key,
    }
    if field.default is not None:
        kwargs["default"] = field.default
    if isinstance(field, peewee.CharField):
        kwargs["max_length"] = field.max_length
    if isinstance(field, peewee.AutoField):
        return {}
    return kwargs


def _migration_2(db: peewee.Database) -> None:
    from playhouse.migrate import SchemaMigrator, migrate

    migrate(SchemaMigrator.from_database(db).add_column("run", "bus_offset", Run.bus_offset))
    db.create_tables([Task])


def _migration_3(db: peewee.Database) -> None:
    db.create_tables([ApiToken])
    # Per-user queue limits count a user's active runs.
    db.execute_sql('CREATE INDEX IF NOT EXISTS "run_owner_state" ON "run" ("owner", "state")')


_SQLITE_COUNT_TRIGGERS = [
    """CREATE TRIGGER run_count_insert AFTER INSERT ON run BEGIN
         INSERT INTO state_count (owner, state, n) VALUES (NEW.owner, NEW.state, 1)
           ON CONFLICT (owner, state) DO UPDATE SET n = n + 1;
       END""",
    """CREATE TRIGGER run_count_update AFTER UPDATE OF state ON run WHEN OLD.state <> NEW.state BEGIN
         UPDATE state_count SET n = n - 1 WHERE owner = OLD.owner AND state = OLD.state;
         INSERT INTO state_count (owner, state, n) VALUES (NEW.owner, NEW.state, 1)
           ON CONFLICT (owner, state) DO UPDATE SET n = n + 1;
       END""",
    """CREATE TRIGGER run_count_delete AFTER DELETE ON run BEGIN
         UPDATE state_count SET n = n - 1 WHERE owner = OLD.owner AND state = OLD.state;
       END""",
]

_POSTGRES_COUNT_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION wes_run_count() RETURNS trigger AS $$
       BEGIN
         IF TG_OP IN ('UPDATE', 'DELETE') THEN
           UPDATE state_count SET n = n - 1 WHERE owner = OLD.owner AND state = OLD.state;
         END IF;
         IF TG_OP IN ('INSERT', 'UPDATE') THEN
           INSERT INTO state_count (owner, state, n) VALUES (NEW.owner, NEW.state, 1)
             ON CONFLICT (owner, state) DO UPDATE SET n = state_count.n + 1;
           RETURN NEW;
         END IF;
         RETURN OLD;
       END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER run_count_insert AFTER INSERT ON run FOR EACH ROW EXECUTE FUNCTION wes_run_count()""",
    """CREATE TRIGGER run_count_update AFTER UPDATE OF state ON run FOR EACH ROW
         WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION wes_run_count()""",
    """CREATE TRIGGER run_count_delete AFTER DELETE ON run FOR EACH ROW EXECUTE FUNCTION wes_run_count()""",
]


def _migration_4(db: peewee.Database) -> None:
    db.create_tables([StateCount])
    triggers = _POSTGRES_COUNT_TRIGGERS if isinstance(db, peewee.PostgresqlDatabase) else _SQLITE_COUNT_TRIGGERS
    for statement in triggers:
        db.execute_sql(statement)
    # Existing runs are counted once; from here on the triggers keep the counts.
    db.execute_sql(
        "INSERT INTO state_count (owner, state, n) SELECT owner, state, COUNT(*) FROM run GROUP BY owner, state"
    )


def _migration_5(db: peewee.Database) -> None:
    # Written, never read: the params file's path (it is always <run>/params.json) and a claim
    # counter. SQLite has dropped columns in place since 3.35, keeping the count triggers.
    for column in ("params_path", "attempts"):
        db.execute_sql(f'ALTER TABLE "run" DROP COLUMN "{column}"')


def _migration_6(db: peewee.Database) -> None:
    # Several gateway hosts on one database: which host holds a run, and the leader's own
    # heartbeat and fencing token; the node each task ran on.
    from playhouse.migrate import SchemaMigrator, migrate

    migrator = SchemaMigrator.from_database(db)
    wanted = [("run", Run.host_id), ("run", Run.leader_token), ("run", Run.heartbeat_at), ("task", Task.node)]
    # Migration 2 creates the task table from the current model, so it may have the column.
    present = {table: {column.name for column in db.get_columns(table)} for table in ("run", "task")}
    migrate(
        *(
            migrator.add_column(table, field.column_name, field)
            for table, field in wanted
            if field.column_name not in present[table]
        )
    )
    if isinstance(db, peewee.PostgresqlDatabase):
        # Leases were REAL (float4) there: 24 bits of an epoch timestamp is a 128 s step, so a
        # lease could lapse two minutes late or early. SQLite's REAL was a double all along.
        db.execute_sql('ALTER TABLE "run" ALTER COLUMN "lease_until" TYPE DOUBLE PRECISION')


def _migration_7(db: peewee.Database) -> None:
    # The run filters: tags through their own indexed table, state, submission time and
    # workflow type by index, each also ordered by run (owner has had its (owner, id) index).
    db.create_tables([RunTag])
    for name, columns in (
        ("run_submitted_at", '"submitted_at", "id"'),
        ("run_state_id", '"state", "id"'),
        ("run_workflow_type_id", '"workflow_type", "id"'),
    ):
        db.execute_sql(f'CREATE INDEX IF NOT EXISTS "{name}" ON "run" ({columns})')
    last = 0
    while True:
        rows = list(Run.select(Run.id, Run.tags).where(Run.id > last).order_by(Run.id).limit(1000).tuples())
        if not rows:
            break
        tags = [
            {"run_pk": pk, "digest": tag_digest(key, str(value))}
            for pk, found in rows
            for key, value in (found or {}).items()
        ]
        if tags:
            RunTag.insert_many(tags).execute()
        last = rows[-1][0]


def _migration_8(db: peewee.Database) -> None:
    # DELETE /runs/{id} keeps a tombstone: the record stays, with the time its files went.
    from playhouse.migrate import SchemaMigrator, migrate

    if "deleted_at" not in {column.name for column in db.get_columns("run")}:
        migrate(SchemaMigrator.from_database(db).add_column("run", "deleted_at", Run.deleted_at))


def _migration_9(db: peewee.Database) -> None:
    # The events stream: state changes and task starts and ends, in order, per run.
    db.create_tables([RunEvent])


def _migration_10(db: peewee.Database) -> None:
    # The container image each task ran in.
    from playhouse.migrate import SchemaMigrator, migrate

    if "container" not in {column.name for column in db.get_columns("task")}:
        migrate(SchemaMigrator.from_database(db).add_column("task", "container", Task.container))


def _migration_11(db: peewee.Database) -> None:
    # Failed logins in the store, so that every web worker counts the same ones.
    db.create_tables([LoginFailure])


# Append, never edit: deployed databases have run the earlier entries.
MIGRATIONS: list[Callable[[peewee.Database], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
    _migration_9,
    _migration_10,
    _migration_11,
]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(db: peewee.Database) -> int:
    if not db.table_exists(SchemaVersion._meta.table_name):
        return 0
    row = SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar()
    return int(row or 0)


def upgrade(db: peewee.Database) -> list[int]:
    """Apply pending migrations in order; return the versions applied."""
    applied: list[int] = []
    with write_transaction():
        db.create_tables([SchemaVersion])
        version = current_version(db)
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("applying schema migration %d", number)
            migration(db)
            SchemaVersion.create(version=number)
            applied.append(number)
    return applied


# ---------------------------------------------------------------- runs


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
    allowed = ALLOWED_FROM[new_state]
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


def claim_next(worker_id: str, host_id: str, lease_seconds: float) -> Run | None:
    """Atomically take the oldest QUEUED run for ``worker_id``, or return None."""
    for _ in range(10):
        candidate = Run.select(Run.id, Run.run_id).where(Run.state == QUEUED).order_by(Run.id).first()
        if candidate is None:
            return None
        with write_transaction():
            taken = (
                Run.update(
                    state=INITIALIZING,
                    claimed_by=worker_id,
                    host_id=host_id,
                    lease_until=time.time() + lease_seconds,
                )
                .where((Run.id == candidate.id) & (Run.state == QUEUED))
                .execute()
            )
            if taken == 1:
                record_event(candidate.run_id, "state", {"state": INITIALIZING, "time": utc_now()})
        if taken == 1:
            log.info("run %s claimed by %s", candidate.run_id, worker_id)
            return get_run(candidate.run_id)
    return None


def renew_lease(run_id: str, worker_id: str, lease_seconds: float) -> bool:
    return bool(
        Run.update(lease_until=time.time() + lease_seconds)
        .where((Run.run_id == run_id) & (Run.claimed_by == worker_id) & Run.state.in_(list(ACTIVE)))
        .execute()
        == 1
    )


def take_over_expired(worker_id: str, host_id: str, lease_seconds: float) -> list[Run]:
    """Claim active runs whose supervisor stopped renewing its lease, where this host may.

    A lapsed lease only says that a supervisor died. A run of this host is taken at once (its
    leader, if alive, is adopted by pid). A run of another host is taken only once its leader's
    own heartbeat has lapsed too: that host's leader may well live on without its supervisor.
    """
    now = time.time()
    lapsed = Run.state.in_(list(ACTIVE)) & ((Run.lease_until.is_null()) | (Run.lease_until < now))
    takeable = (
        (Run.host_id == host_id)
        | Run.host_id.is_null()
        | Run.heartbeat_at.is_null()
        | (Run.heartbeat_at < now - lease_seconds)
    )
    stale = list(Run.select(Run.id, Run.run_id).where(lapsed & takeable))
    taken: list[Run] = []
    for run in stale:
        changed = (
            # host_id stays the leader's host until a new leader starts (leader_started), so
            # the taker can tell whether the leader it must find is one of its own host's.
            Run.update(claimed_by=worker_id, lease_until=now + lease_seconds)
            .where((Run.id == run.id) & lapsed & takeable)
            .execute()
        )
        if changed == 1:
            now_taken = get_run(run.run_id)
            if now_taken is not None:
                taken.append(now_taken)
    return taken


def leader_started(run_id: str, token: str, host_id: str) -> None:
    """A new leader owns the run from now: any earlier one's heartbeat no longer matches."""
    Run.update(leader_token=token, host_id=host_id, heartbeat_at=time.time()).where(Run.run_id == run_id).execute()


def beat(run_id: str, token: str) -> bool:
    """The leader's heartbeat; False once another leader owns the run (or it has ended)."""
    return bool(
        Run.update(heartbeat_at=time.time())
        .where((Run.run_id == run_id) & (Run.leader_token == token) & Run.state.in_(list(ACTIVE)))
        .execute()
        == 1
    )


def leader_owns(run_id: str, token: str) -> bool:
    value = Run.select(Run.leader_token).where(Run.run_id == run_id).scalar()
    return bool(value == token)


def cancel_requested(run_id: str) -> bool:
    value = Run.select(Run.cancel_requested).where(Run.run_id == run_id).scalar()
    return bool(value)


def active_runs(owner: str) -> int:
    return int(Run.select().where((Run.owner == owner) & Run.state.in_([QUEUED, *ACTIVE])).count())


def create_token(user: str, token_hash: str, label: str) -> ApiToken:
    return cast(ApiToken, ApiToken.create(user=user, token_hash=token_hash, label=label, created_at=utc_now()))


def token_owner(token_hash: str) -> str | None:
    row = ApiToken.get_or_none((ApiToken.token_hash == token_hash) & ApiToken.revoked_at.is_null())
    return None if row is None else str(row.user)


def list_tokens() -> list[ApiToken]:
    return list(ApiToken.select().order_by(ApiToken.id))


def revoke_token(token_id: int) -> bool:
    return bool(
        ApiToken.update(revoked_at=utc_now()).where((ApiToken.id == token_id) & ApiToken.revoked_at.is_null()).execute()
        == 1
    )


def state_counts(owner: str | None = None) -> dict[str, int]:
    """Runs per state, from the trigger-maintained counts: one GROUP BY over a handful of rows."""
    query = StateCount.select(StateCount.state, peewee.fn.SUM(StateCount.n).alias("total"))
    if owner is not None:
        query = query.where(StateCount.owner == owner)
    return {row.state: int(row.total) for row in query.group_by(StateCount.state) if row.total}


# ---------------------------------------------------------------- paging


class BadPageToken(ValueError):
    pass


_KEY_END = 2**63 - 1  # past every 64-bit key: the first page's bound, newest first


def encode_token(key: int, ascending: bool = False) -> str:
    prefix = "a1" if ascending else "k1"
    return base64.urlsafe_b64encode(f"{prefix}:{key}".encode()).decode().rstrip("=")


def decode_token(token: str, ascending: bool = False) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        prefix, _, number = text.partition(":")
        key = int(number)
        if prefix not in ("k1", "a1") or not 0 <= key < 2**63:  # keys are 64-bit primary keys
            raise ValueError(text)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise BadPageToken("page_token is not one this service issued") from exc
    if (prefix == "a1") != ascending:
        raise BadPageToken("page_token was issued for the other sort_order")
    return key


def _keyset_page(
    query: peewee.ModelSelect, key: peewee.Field, page_size: int, page_token: str | None, descending: bool
) -> tuple[list[Any], str]:
    """One page ordered on ``key``, resumed after the token's key: rows inserted meanwhile
    never shift a page, unlike OFFSET. The first page is bounded too, past every key, so that
    it is the very query of every later page: a range on the key's index, walked in order
    and stopped at the limit (SQLite's plan then says so: SEARCH ... (rowid<?), where the
    unbounded query read "SCAN", as a scan of the whole table would)."""
    if page_token:
        bound = decode_token(page_token, ascending=not descending)
    else:
        bound = _KEY_END if descending else -1
    query = query.where(key < bound if descending else key > bound)
    rows = list(query.order_by(key.desc() if descending else key).limit(page_size + 1))
    last = rows[page_size - 1] if len(rows) > page_size else None
    # The key is the row's own id, or a joined copy of it: the token holds the id.
    next_token = encode_token(last.id, ascending=not descending) if last is not None else ""
    return rows[:page_size], next_token


@dataclass(frozen=True)
class RunFilter:
    """What GET /runs may narrow the list to; every field is optional and all must hold."""

    owner: str | None = None  # None: every owner's runs (an admin)
    states: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    workflow_type: str | None = None
    since: str | None = None  # submission time, as stored: YYYY-MM-DDTHH:MM:SSZ
    until: str | None = None

    def apply(self, query: peewee.ModelSelect) -> tuple[peewee.ModelSelect, peewee.Field]:
        """The query narrowed to the filter, and the column to order and page it by: the run
        id, or with tags the first tag's copy of it, so that SQL walks the (digest, run)
        index in order instead of sorting every match."""
        key: peewee.Field = Run.id
        for number, (name, value) in enumerate(self.tags):
            alias = RunTag.alias(f"t{number}")
            query = query.join(alias, on=(alias.run_pk == Run.id)).where(alias.digest == tag_digest(name, value))
            if number == 0:
                key = alias.run_pk
        if self.owner is not None:
            query = query.where(Run.owner == self.owner)
        if self.states:
            query = query.where(Run.state.in_(list(self.states)))
        if self.workflow_type:
            query = query.where(Run.workflow_type == self.workflow_type)
        if self.since:
            query = query.where(Run.submitted_at >= self.since)
        if self.until:
            query = query.where(Run.submitted_at <= self.until)
        return query, key


def list_runs(
    page_size: int, page_token: str | None, where: RunFilter | None = None, ascending: bool = False, full: bool = False
) -> tuple[list[Run], str]:
    """Newest first, unless ``ascending``; the summary's columns, or with ``full`` all."""
    columns = () if full else (Run.id, Run.run_id, Run.state, Run.start_time, Run.end_time, Run.tags)
    query = Run.select(*columns)
    query, key = (where or RunFilter()).apply(query)
    return _keyset_page(query, key, page_size, page_token, descending=not ascending)


def count_runs(where: RunFilter | None = None) -> int:
    """How many runs the filter matches, whatever the page. By owner and state alone, from
    the trigger-kept counts (as flat as the store is large); otherwise counted."""
    where = where or RunFilter()
    if not (where.tags or where.workflow_type or where.since or where.until):
        counts = state_counts(where.owner)
        return sum(n for state, n in counts.items() if not where.states or state in where.states)
    query, _ = where.apply(Run.select(peewee.fn.COUNT(Run.id)))
    return int(query.scalar() or 0)


def list_tasks(run_id: str, page_size: int, page_token: str | None) -> tuple[list[Task], str]:
    """In order of first appearance."""
    return _keyset_page(Task.select().where(Task.run_id == run_id), Task.id, page_size, page_token, descending=False)


def iter_runs(states: Iterable[str]) -> list[Run]:
    return list(Run.select().where(Run.state.in_(list(states))).order_by(Run.id))


def record_login_failure(key: str, window: float) -> None:
    """One more failed login for ``key``; failures older than ``window`` seconds go."""
    now = time.time()
    with database.atomic():
        LoginFailure.create(key=key[:512], at=now)
        LoginFailure.delete().where(LoginFailure.at < now - window).execute()


def login_failures(key: str, window: float) -> list[float]:
    """When ``key``'s failed logins of the last ``window`` seconds happened, oldest first."""
    rows = (
        LoginFailure.select(LoginFailure.at)
        .where((LoginFailure.key == key[:512]) & (LoginFailure.at >= time.time() - window))
        .order_by(LoginFailure.at)
    )
    return [float(row.at) for row in rows]


def ping() -> None:
    """Raises when the store cannot answer."""
    Run.select(Run.id).limit(1).execute()


# ---------------------------------------------------------------- tasks


def bus_offset(run_id: str) -> int | None:
    """Bytes of the run's message bus already ingested, or None for an unknown run."""
    value = Run.select(Run.bus_offset).where(Run.run_id == run_id).scalar()
    return None if value is None else int(value)


def set_bus_offset(run_id: str, offset: int) -> None:
    Run.update(bus_offset=offset).where(Run.run_id == run_id).execute()


def task_issued(run_id: str, task_id: str, job_id: str, name: str, batch_id: int, now: str) -> None:
    existing = Task.get_or_none((Task.run_id == run_id) & (Task.task_id == task_id))
    if existing is None:
        Task.create(
            run_id=run_id,
            task_id=task_id,
            job_id=job_id,
            name=name[:255],
            start_time=now,
            batch_id=batch_id,
            attempts=1,
        )
    else:
        # A retry: same job, new attempt. The latest attempt's outcome is what counts.
        Task.update(batch_id=batch_id, attempts=Task.attempts + 1, end_time=None, exit_code=None, failed=False).where(
            Task.id == existing.id
        ).execute()


def update_task(run_id: str, task_id: str, **fields: Any) -> None:
    Task.update(**fields).where((Task.run_id == run_id) & (Task.task_id == task_id)).execute()


def update_task_by_batch_id(run_id: str, batch_id: int, **fields: Any) -> None:
    Task.update(**fields).where((Task.run_id == run_id) & (Task.batch_id == batch_id)).execute()


def task_log_paths(run_id: str) -> list[str]:
    rows = Task.select(Task.log_path).where((Task.run_id == run_id) & Task.log_path.is_null(False))
    return [str(row.log_path) for row in rows]


def all_tasks(run_id: str) -> list[Task]:
    return list(Task.select().where(Task.run_id == run_id).order_by(Task.id))


def get_task(run_id: str, task_id: str) -> Task | None:
    return cast("Task | None", Task.get_or_none((Task.run_id == run_id) & (Task.task_id == task_id)))


# ---------------------------------------------------------------- retention


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


def hash_token(token: str) -> str:
    # Tokens are 256 random bits: a plain digest is enough, and it makes lookups indexable.
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "wes_" + secrets.token_urlsafe(32)
