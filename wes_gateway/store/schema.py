"""Today's tables, as the code reads and writes them. Migrations never import this module:
each keeps its own copy of the tables as they were when it was written (migrations/)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import peewee

from wes_gateway.store.db import database


class JSONField(peewee.TextField):
    """JSON text in the database, Python values in code: no caller encodes or decodes."""

    def db_value(self, value: Any) -> Any:
        return None if value is None else json.dumps(value)

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class StateField(peewee.CharField):
    """A run state: written as the plain string (a ``State`` is one), read as one too."""

    def db_value(self, value: Any) -> Any:
        return None if value is None else str(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database


class SchemaVersion(BaseModel):
    version = peewee.IntegerField()

    class Meta:
        table_name = "schema_version"


class Run(BaseModel):
    id = peewee.AutoField()
    run_id = peewee.CharField(max_length=64, unique=True)
    owner = peewee.CharField(max_length=255, default="")
    state = StateField(max_length=32, index=True)
    workflow_type = peewee.CharField(max_length=16)
    request = JSONField()  # the RunRequest echo
    engine_args = JSONField(default=list)  # validated engine flags
    workflow_path = peewee.TextField()  # what the leader is given: a local path or URL
    tags = JSONField(default=dict)
    submitted_at = peewee.CharField(max_length=32)
    start_time = peewee.CharField(max_length=32, null=True)
    end_time = peewee.CharField(max_length=32, null=True)
    exit_code = peewee.IntegerField(null=True)
    outputs = JSONField(null=True)
    cmd = JSONField(null=True)
    system_logs = JSONField(default=list)
    claimed_by = peewee.CharField(max_length=128, null=True)
    lease_until = peewee.DoubleField(null=True)  # epoch seconds: PostgreSQL's REAL keeps only ~2 minutes
    leader_pid = peewee.IntegerField(null=True)
    cancel_requested = peewee.BooleanField(default=False)
    bus_offset = peewee.BigIntegerField(default=0)  # bytes of messages.tsv already ingested
    host_id = peewee.CharField(max_length=255, null=True)  # the gateway host whose supervisor holds it
    leader_token = peewee.CharField(max_length=64, null=True)  # fences every leader but the current one
    heartbeat_at = peewee.DoubleField(null=True)  # renewed by the leader's launcher itself
    deleted_at = peewee.CharField(max_length=32, null=True)  # a tombstone: files gone, record kept

    class Meta:
        table_name = "run"
        indexes = ((("owner", "id"), False),)


class Task(BaseModel):
    """One Toil job that ran a workflow step, as read from the run's message bus."""

    id = peewee.AutoField()  # order of first appearance
    run_id = peewee.CharField(max_length=64)
    task_id = peewee.CharField(max_length=255)
    job_id = peewee.CharField(max_length=255)
    name = peewee.CharField(max_length=255)
    start_time = peewee.CharField(max_length=32, null=True)
    end_time = peewee.CharField(max_length=32, null=True)
    exit_code = peewee.IntegerField(null=True)
    cmd = JSONField(null=True)
    log_path = peewee.TextField(null=True)
    batch_id = peewee.IntegerField(null=True)
    batch_system = peewee.CharField(max_length=64, null=True)
    external_id = peewee.CharField(max_length=128, null=True)
    attempts = peewee.IntegerField(default=0)
    failed = peewee.BooleanField(default=False)
    node = peewee.CharField(max_length=255, null=True)  # the host it ran on, as the batch system says
    container = JSONField(null=True)  # the image it ran in: {"image", "id", "digest"} (containers.image_record)

    class Meta:
        table_name = "task"
        indexes = ((("run_id", "task_id"), True), (("run_id", "id"), False), (("run_id", "batch_id"), False))


class RunTag(BaseModel):
    """One tag of a run, for the tag filter: a digest of key and value, so that any length of
    either is one exact, indexable comparison; the index also orders by run."""

    run_pk = peewee.BigIntegerField()
    digest = peewee.CharField(max_length=40)

    class Meta:
        table_name = "run_tag"
        primary_key = False
        indexes = ((("digest", "run_pk"), False), (("run_pk",), False))


def tag_digest(key: str, value: str) -> str:
    return hashlib.sha1(f"{key}\0{value}".encode()).hexdigest()


class RunEvent(BaseModel):
    """What happened to a run, in order: state changes, task starts and ends. The id orders
    them; the event stream numbers them within their run (events_after), so that no client
    learns from its ids how busy the service is."""

    id = peewee.AutoField()
    run_id = peewee.CharField(max_length=64)
    kind = peewee.CharField(max_length=16)
    data = JSONField()

    class Meta:
        table_name = "run_event"
        indexes = ((("run_id", "id"), False),)


class LoginFailure(BaseModel):
    """A failed Basic login, by who tried from where: shared by every web worker."""

    id = peewee.AutoField()
    key = peewee.CharField(max_length=512)  # user and peer (auth.failure_key)
    at = peewee.DoubleField()  # epoch seconds

    class Meta:
        table_name = "login_failure"
        indexes = ((("key", "at"), False),)


class ApiToken(BaseModel):
    id = peewee.AutoField()
    user = peewee.CharField(max_length=255)
    token_hash = peewee.CharField(max_length=64, unique=True)
    label = peewee.CharField(max_length=255, default="")
    created_at = peewee.CharField(max_length=32)
    revoked_at = peewee.CharField(max_length=32, null=True)

    class Meta:
        table_name = "api_token"


class StateCount(BaseModel):
    """Runs per owner and state, kept by database triggers so service-info never scans runs."""

    owner = peewee.CharField(max_length=255)
    state = StateField(max_length=32)
    n = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "state_count"
        primary_key = peewee.CompositeKey("owner", "state")
