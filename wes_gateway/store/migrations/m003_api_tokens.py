"""Migration 3: API tokens, and the (owner, state) index that per-user queue limits count on.

Frozen: imports none of today's models."""

from __future__ import annotations

import peewee


class ApiToken(peewee.Model):
    id = peewee.AutoField()
    user = peewee.CharField(max_length=255)
    token_hash = peewee.CharField(max_length=64, unique=True)
    label = peewee.CharField(max_length=255, default="")
    created_at = peewee.CharField(max_length=32)
    revoked_at = peewee.CharField(max_length=32, null=True)

    class Meta:
        table_name = "api_token"


def migrate(db: peewee.Database) -> None:
    with db.bind_ctx([ApiToken]):
        db.create_tables([ApiToken])
    db.execute_sql('CREATE INDEX IF NOT EXISTS "run_owner_state" ON "run" ("owner", "state")')
