"""Helpers for the store's tests: a run recorded straight into the store, and stores built at an
earlier schema version with a row in every table, then compared after their upgrade.

Used by tests/fast (SQLite) and by tests/e2e/test_migrations_postgres.py (PostgreSQL), which
loads this file by its path."""

from __future__ import annotations

from typing import Any

import peewee

from wes_gateway import store

# One row per table, with every column the table ever had: at version k, a row gets the
# columns its table has then. Floats are exact in PostgreSQL's REAL (leases were REAL there
# until migration 6), so that the values compare equal whatever the version.
ROWS: dict[str, dict[str, Any]] = {
    "run": {
        "run_id": "old-run",
        "owner": "alice",
        "state": "COMPLETE",
        "workflow_type": "CWL",
        "request": '{"workflow_url": "x.cwl"}',
        "engine_args": '["--debug"]',
        "workflow_path": "/x.cwl",
        "params_path": "/p.json",
        "tags": '{"project": "p1"}',
        "submitted_at": "2026-01-01T00:00:00Z",
        "start_time": "2026-01-01T00:00:01Z",
        "end_time": "2026-01-01T00:00:02Z",
        "exit_code": 0,
        "outputs": '{"out": 1}',
        "cmd": '["toil-cwl-runner"]',
        "system_logs": '["a line"]',
        "claimed_by": "sup-1",
        "lease_until": 1024.5,
        "leader_pid": 42,
        "cancel_requested": False,
        "attempts": 1,
        "bus_offset": 77,
        "host_id": "host-a",
        "leader_token": "token-a",
        "heartbeat_at": 2048.25,
        "deleted_at": "2026-01-03T00:00:00Z",
    },
    "task": {
        "run_id": "old-run",
        "task_id": "t1",
        "job_id": "j1",
        "name": "step",
        "start_time": "2026-01-01T00:00:01Z",
        "end_time": "2026-01-01T00:00:02Z",
        "exit_code": 0,
        "cmd": '["echo", "hi"]',
        "log_path": "/logs/t1",
        "batch_id": 3,
        "batch_system": "single_machine",
        "external_id": "ext-3",
        "attempts": 2,
        "failed": True,
        "node": "node-1",
        "container": '{"image": "alpine"}',
    },
    "api_token": {
        "user": "alice",
        "token_hash": "f" * 64,
        "label": "laptop",
        "created_at": "2026-01-01T00:00:00Z",
        "revoked_at": None,
    },
    "run_event": {"run_id": "old-run", "kind": "state", "data": '{"state": "COMPLETE"}'},
    "login_failure": {"key": "alice 127.0.0.1", "at": 4096.5},
}
# How each table's row is found again after the upgrade.
KEYS = {"run": "run_id", "task": "task_id", "api_token": "token_hash", "run_event": "kind", "login_failure": "key"}
VERSIONS = range(0, store.SCHEMA_VERSION)  # every earlier version, 0 being an empty database


def columns_of(db: peewee.Database, table: str) -> list[str]:
    return [column.name for column in db.get_columns(table)]


def build_at(db: peewee.Database, version: int) -> dict[str, dict[str, Any]]:
    """The store at ``version`` (by the frozen migrations), with a row in each of its tables as
    the table is then; return the rows written, by table."""
    assert store.upgrade(db, to=version) == list(range(1, version + 1))
    written: dict[str, dict[str, Any]] = {}
    with db.atomic():
        for table, row in ROWS.items():
            if not db.table_exists(table):
                continue
            present = set(columns_of(db, table))
            values = {name: value for name, value in row.items() if name in present}
            names = ", ".join(f'"{name}"' for name in values)
            marks = ", ".join(db.param for _ in values)
            db.execute_sql(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', list(values.values()))
            written[table] = values
        if db.table_exists("run_tag"):  # as the service writes a run's tags from version 7
            pk = db.execute_sql(f'SELECT id FROM "run" WHERE run_id = {db.param}', ["old-run"]).fetchone()[0]
            db.execute_sql(
                f'INSERT INTO "run_tag" (run_pk, digest) VALUES ({db.param}, {db.param})',
                [pk, store.tag_digest("project", "p1")],
            )
    return written


def assert_rows_survived(db: peewee.Database, written: dict[str, dict[str, Any]]) -> None:
    """Every value written at the old version reads back the same, where its column remains."""
    for table, values in written.items():
        kept = [name for name in values if name in set(columns_of(db, table))]
        quoted = ", ".join(f'"{name}"' for name in kept)
        found = db.execute_sql(
            f'SELECT {quoted} FROM "{table}" WHERE "{KEYS[table]}" = {db.param}', [values[KEYS[table]]]
        ).fetchall()
        assert len(found) == 1, (table, found)
        assert dict(zip(kept, found[0], strict=True)) == {name: values[name] for name in kept}, table
    if "run" in written:
        run = store.get_run("old-run")
        assert run is not None and run.tags == {"project": "p1"} and run.state == store.State.COMPLETE
        assert store.state_counts() == {"COMPLETE": 1}  # counted by migration 4, or by its triggers
        tagged, _ = store.list_runs(10, None, store.RunFilter(tags=(("project", "p1"),)))
        assert [r.run_id for r in tagged] == ["old-run"]  # the tag row, backfilled by migration 7 or not


def schema_of(db: peewee.Database) -> dict[str, Any]:
    """Tables with their columns (in order, with types), indexes and triggers, as the database
    itself reports them."""
    if isinstance(db, peewee.PostgresqlDatabase):
        return _postgres_schema(db)
    tables = [row[0] for row in db.execute_sql("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    schema: dict[str, Any] = {}
    for table in tables:
        columns = [tuple(row[1:]) for row in db.execute_sql(f'PRAGMA table_info("{table}")')]
        indexes = {}
        for _, name, unique, *_ in db.execute_sql(f'PRAGMA index_list("{table}")'):
            indexes[name] = (bool(unique), [row[2] for row in db.execute_sql(f'PRAGMA index_info("{name}")')])
        schema[table] = {"columns": columns, "indexes": indexes}
    triggers = db.execute_sql("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
    schema["triggers"] = [tuple(row) for row in triggers]
    return schema


def _postgres_schema(db: peewee.Database) -> dict[str, Any]:
    columns = db.execute_sql(
        "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    ).fetchall()
    schema: dict[str, Any] = {}
    for table, *column in columns:
        schema.setdefault(table, {"columns": [], "indexes": {}})["columns"].append(tuple(column))
    for table, name, definition in db.execute_sql(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    ):
        schema[table]["indexes"][name] = definition
    triggers = db.execute_sql(
        "SELECT trigger_name, event_manipulation, event_object_table, action_timing, action_condition,"
        " action_statement FROM information_schema.triggers WHERE trigger_schema = 'public'"
        " ORDER BY trigger_name, event_manipulation"
    )
    schema["triggers"] = [tuple(row) for row in triggers]
    functions = db.execute_sql(
        "SELECT proname, prosrc FROM pg_proc JOIN pg_namespace n ON n.oid = pronamespace"
        " WHERE nspname = 'public' ORDER BY proname"
    )
    schema["functions"] = [tuple(row) for row in functions]
    return schema
