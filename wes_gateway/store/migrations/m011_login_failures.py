"""Migration 11: failed logins in the store, so that every web worker counts the same ones.

Frozen: its own copy of the table; imports none of today's models."""

from __future__ import annotations

import peewee


class LoginFailure(peewee.Model):
    id = peewee.AutoField()
    key = peewee.CharField(max_length=512)
    at = peewee.DoubleField()

    class Meta:
        table_name = "login_failure"
        indexes = ((("key", "at"), False),)


def migrate(db: peewee.Database) -> None:
    with db.bind_ctx([LoginFailure]):
        db.create_tables([LoginFailure])
