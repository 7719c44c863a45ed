"""Migration 2: tasks read from Toil's message bus, and how far the bus was read.

Frozen: the task table as it was when this was written (``node`` came with migration 6,
``container`` with migration 10); imports none of today's models."""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as apply


class Task(peewee.Model):
    id = peewee.AutoField()
    run_id = peewee.CharField(max_length=64)
    task_id = peewee.CharField(max_length=255)
    job_id = peewee.CharField(max_length=255)
    name = peewee.CharField(max_length=255)
    start_time = peewee.CharField(max_length=32, null=True)
    end_time = peewee.CharField(max_length=32, null=True)
    exit_code = peewee.IntegerField(null=True)
    cmd = peewee.TextField(null=True)
    log_path = peewee.TextField(null=True)
    batch_id = peewee.IntegerField(null=True)
    batch_system = peewee.CharField(max_length=64, null=True)
    external_id = peewee.CharField(max_length=128, null=True)
    attempts = peewee.IntegerField(default=0)
    failed = peewee.BooleanField(default=False)

    class Meta:
        table_name = "task"
        indexes = ((("run_id", "task_id"), True), (("run_id", "id"), False), (("run_id", "batch_id"), False))


def migrate(db: peewee.Database) -> None:
    # Bytes of the run's messages.tsv already ingested.
    apply(SchemaMigrator.from_database(db).add_column("run", "bus_offset", peewee.BigIntegerField(default=0)))
    with db.bind_ctx([Task]):
        db.create_tables([Task])
