"""Migration 5: drop two run columns that were written and never read.

Frozen: SQL only."""

from __future__ import annotations

import peewee


def migrate(db: peewee.Database) -> None:
    # The params file's path (it is always <run>/params.json) and a claim counter. SQLite has
    # dropped columns in place since 3.35, keeping the count triggers.
    for column in ("params_path", "attempts"):
        db.execute_sql(f'ALTER TABLE "run" DROP COLUMN "{column}"')
