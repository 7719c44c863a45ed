"""Migration 7: the run filters. Tags through their own indexed table; state, submission time
and workflow type by index, each also ordered by run (owner has had its (owner, id) index).

Frozen: its own copies of the tables and of the tag digest; imports none of today's models."""

from __future__ import annotations

import hashlib
import json

import peewee


class Run(peewee.Model):
    """The two run columns the tag backfill reads."""

    id = peewee.AutoField()
    tags = peewee.TextField()

    class Meta:
        table_name = "run"


class RunTag(peewee.Model):
    run_pk = peewee.BigIntegerField()
    digest = peewee.CharField(max_length=40)

    class Meta:
        table_name = "run_tag"
        primary_key = False
        indexes = ((("digest", "run_pk"), False), (("run_pk",), False))


def tag_digest(key: str, value: str) -> str:
    return hashlib.sha1(f"{key}\0{value}".encode()).hexdigest()


def migrate(db: peewee.Database) -> None:
    with db.bind_ctx([Run, RunTag]):
        db.create_tables([RunTag])
        for name, columns in (
            ("run_submitted_at", '"submitted_at", "id"'),
            ("run_state_id", '"state", "id"'),
            ("run_workflow_type_id", '"workflow_type", "id"'),
        ):
            db.execute_sql(f'CREATE INDEX IF NOT EXISTS "{name}" ON "run" ({columns})')
        _backfill_tags()


def _backfill_tags() -> None:
    last = 0
    while True:  # each page starts past the last: it ends with the table
        rows = list(Run.select(Run.id, Run.tags).where(Run.id > last).order_by(Run.id).limit(1000).tuples())
        if not rows:
            break
        tags = [
            {"run_pk": pk, "digest": tag_digest(key, str(value))}
            for pk, found in rows
            for key, value in (json.loads(found) if found else {}).items()
        ]
        if tags:
            RunTag.insert_many(tags).execute()
        last = rows[-1][0]
