"""Migration 1: the run table, as the first release wrote it.

Frozen: this file never changes and imports none of today's models (deployed databases ran it
as it is; columns added later arrive through later migrations)."""

from __future__ import annotations

import peewee


class RunV1(peewee.Model):
    """Named RunV1 as it was when deployed: Peewee names the indexes after the class
    (``runv1_owner_id``, ``runv1_run_id``, ``runv1_state``)."""

    id = peewee.AutoField()
    run_id = peewee.CharField(max_length=64, unique=True)
    owner = peewee.CharField(max_length=255, default="")
    state = peewee.CharField(max_length=32, index=True)
    workflow_type = peewee.CharField(max_length=16)
    request = peewee.TextField()
    engine_args = peewee.TextField(default="[]")
    workflow_path = peewee.TextField()
    params_path = peewee.TextField()  # dropped by migration 5
    tags = peewee.TextField(default="{}")
    submitted_at = peewee.CharField(max_length=32)
    start_time = peewee.CharField(max_length=32, null=True)
    end_time = peewee.CharField(max_length=32, null=True)
    exit_code = peewee.IntegerField(null=True)
    outputs = peewee.TextField(null=True)
    cmd = peewee.TextField(null=True)
    system_logs = peewee.TextField(default="[]")
    claimed_by = peewee.CharField(max_length=128, null=True)
    lease_until = peewee.FloatField(null=True)  # REAL on PostgreSQL until migration 6
    leader_pid = peewee.IntegerField(null=True)
    cancel_requested = peewee.BooleanField(default=False)
    attempts = peewee.IntegerField(default=0)  # dropped by migration 5

    class Meta:
        table_name = "run"
        indexes = ((("owner", "id"), False),)


def migrate(db: peewee.Database) -> None:
    with db.bind_ctx([RunV1]):
        db.create_tables([RunV1])
