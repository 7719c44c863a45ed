"""Migration 8: DELETE /runs/{id} keeps a tombstone: the record stays, with the time its files went.

Frozen: its own copy of the column; imports none of today's models."""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as apply


def migrate(db: peewee.Database) -> None:
    if "deleted_at" not in {column.name for column in db.get_columns("run")}:
        column = peewee.CharField(max_length=32, null=True)
        apply(SchemaMigrator.from_database(db).add_column("run", "deleted_at", column))
