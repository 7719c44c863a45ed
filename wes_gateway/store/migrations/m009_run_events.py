"""Migration 9: the events stream: state changes and task starts and ends, in order, per run.

Frozen: its own copy of the table; imports none of today's models."""

from __future__ import annotations

import peewee


class RunEvent(peewee.Model):
    id = peewee.AutoField()
    run_id = peewee.CharField(max_length=64)
    kind = peewee.CharField(max_length=16)
    data = peewee.TextField()

    class Meta:
        table_name = "run_event"
        indexes = ((("run_id", "id"), False),)


def migrate(db: peewee.Database) -> None:
    with db.bind_ctx([RunEvent]):
        db.create_tables([RunEvent])
