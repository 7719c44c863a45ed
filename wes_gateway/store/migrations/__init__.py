"""Schema migrations, one frozen file each, applied in order.

Append, never edit: deployed databases have run the earlier entries. A migration imports
peewee, playhouse and its own copies of the tables as they were when it was written, never
today's models (``wes_gateway.store.schema``): a field added to a model later must not change
what an old migration creates (tests/fast/test_migrations.py checks both). The copies keep
their class names as deployed: Peewee names an index after its model's class."""

from __future__ import annotations

import logging
from collections.abc import Callable

import peewee

from wes_gateway.store.migrations import (
    m001_initial,
    m002_tasks,
    m003_api_tokens,
    m004_state_counts,
    m005_drop_unread_columns,
    m006_hosts,
    m007_run_filters,
    m008_tombstones,
    m009_run_events,
    m010_task_containers,
    m011_login_failures,
)

log = logging.getLogger(__name__)

MIGRATIONS: list[Callable[[peewee.Database], None]] = [
    m001_initial.migrate,
    m002_tasks.migrate,
    m003_api_tokens.migrate,
    m004_state_counts.migrate,
    m005_drop_unread_columns.migrate,
    m006_hosts.migrate,
    m007_run_filters.migrate,
    m008_tombstones.migrate,
    m009_run_events.migrate,
    m010_task_containers.migrate,
    m011_login_failures.migrate,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaVersion(peewee.Model):
    """One row per migration applied (the table is as old as the store; it never changes)."""

    version = peewee.IntegerField()

    class Meta:
        table_name = "schema_version"


def current_version(db: peewee.Database) -> int:
    if not db.table_exists(SchemaVersion._meta.table_name):
        return 0
    with db.bind_ctx([SchemaVersion]):
        row = SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar()
    return int(row or 0)


def upgrade(db: peewee.Database, to: int = SCHEMA_VERSION) -> list[int]:
    """Apply pending migrations in order, up to version ``to`` (tests build old stores with
    it); return the versions applied."""
    applied: list[int] = []
    # On SQLite the write lock is taken up front (see db.write_transaction).
    lock = {"lock_type": "IMMEDIATE"} if isinstance(db, peewee.SqliteDatabase) else {}
    with db.atomic(**lock), db.bind_ctx([SchemaVersion]):
        db.create_tables([SchemaVersion])
        version = current_version(db)
        for number, migration in enumerate(MIGRATIONS[version:to], start=version + 1):
            log.info("applying schema migration %d", number)
            migration(db)
            SchemaVersion.create(version=number)
            applied.append(number)
    return applied
