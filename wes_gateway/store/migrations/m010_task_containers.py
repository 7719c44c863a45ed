"""Migration 10: the container image each task ran in.

Frozen: its own copy of the column; imports none of today's models."""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as apply


def migrate(db: peewee.Database) -> None:
    if "container" not in {column.name for column in db.get_columns("task")}:
        column = peewee.TextField(null=True)  # JSON: {"image", "id", "digest"}
        apply(SchemaMigrator.from_database(db).add_column("task", "container", column))
