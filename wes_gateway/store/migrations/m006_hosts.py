"""Migration 6: several gateway hosts on one database.

Frozen: its own copies of the columns it adds; imports none of today's models."""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as apply


def migrate(db: peewee.Database) -> None:
    # Which host holds a run, and the leader's own heartbeat and fencing token; the node each
    # task ran on.
    migrator = SchemaMigrator.from_database(db)
    wanted: list[tuple[str, str, peewee.Field]] = [
        ("run", "host_id", peewee.CharField(max_length=255, null=True)),
        ("run", "leader_token", peewee.CharField(max_length=64, null=True)),
        ("run", "heartbeat_at", peewee.DoubleField(null=True)),
        ("task", "node", peewee.CharField(max_length=255, null=True)),
    ]
    # Migration 2 once created the task table from the model of its day, so a database it
    # built then may have the column already.
    present = {table: {column.name for column in db.get_columns(table)} for table in ("run", "task")}
    apply(*(migrator.add_column(table, name, field) for table, name, field in wanted if name not in present[table]))
    if isinstance(db, peewee.PostgresqlDatabase):
        # Leases were REAL (float4) there: 24 bits of an epoch timestamp is a 128 s step, so a
        # lease could lapse two minutes late or early. SQLite's REAL was a double all along.
        db.execute_sql('ALTER TABLE "run" ALTER COLUMN "lease_until" TYPE DOUBLE PRECISION')
