"""Migration 4: runs per owner and state, kept by triggers so that service-info never scans runs.

Frozen: imports none of today's models."""

from __future__ import annotations

import peewee


class StateCount(peewee.Model):
    owner = peewee.CharField(max_length=255)
    state = peewee.CharField(max_length=32)
    n = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "state_count"
        primary_key = peewee.CompositeKey("owner", "state")


_SQLITE_COUNT_TRIGGERS = [
    """CREATE TRIGGER run_count_insert AFTER INSERT ON run BEGIN
         INSERT INTO state_count (owner, state, n) VALUES (NEW.owner, NEW.state, 1)
           ON CONFLICT (owner, state) DO UPDATE SET n = n + 1;
       END""",
    """CREATE TRIGGER run_count_update AFTER UPDATE OF state ON run WHEN OLD.state <> NEW.state BEGIN
         UPDATE state_count SET n = n - 1 WHERE owner = OLD.owner AND state = OLD.state;
         INSERT INTO state_count (owner, state, n) VALUES (NEW.owner, NEW.state, 1)
           ON CONFLICT (owner, state) DO UPDATE SET n = n + 1;
       END""",
    """CREATE TRIGGER run_count_delete AFTER DELETE ON run BEGIN
         UPDATE state_count SET n = n - 1 WHERE owner = OLD.owner AND state = OLD.state;
       END""",
]

_POSTGRES_COUNT_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION wes_run_count() RETURNS trigger AS $$
       BEGIN
         IF TG_OP IN ('UPDATE', 'DELETE') THEN
           UPDATE state_count SET n = n - 1 WHERE owner = OLD.owner AND state = OLD.state;
         END IF;
         IF TG_OP IN ('INSERT', 'UPDATE') THEN
           INSERT INTO state_count (owner, state, n) VALUES (NEW.owner, NEW.state, 1)
             ON CONFLICT (owner, state) DO UPDATE SET n = state_count.n + 1;
           RETURN NEW;
         END IF;
         RETURN OLD;
       END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER run_count_insert AFTER INSERT ON run FOR EACH ROW EXECUTE FUNCTION wes_run_count()""",
    """CREATE TRIGGER run_count_update AFTER UPDATE OF state ON run FOR EACH ROW
         WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION wes_run_count()""",
    """CREATE TRIGGER run_count_delete AFTER DELETE ON run FOR EACH ROW EXECUTE FUNCTION wes_run_count()""",
]


def migrate(db: peewee.Database) -> None:
    with db.bind_ctx([StateCount]):
        db.create_tables([StateCount])
    triggers = _POSTGRES_COUNT_TRIGGERS if isinstance(db, peewee.PostgresqlDatabase) else _SQLITE_COUNT_TRIGGERS
    for statement in triggers:
        db.execute_sql(statement)
    # Existing runs are counted once; from here on the triggers keep the counts.
    db.execute_sql(
        "INSERT INTO state_count (owner, state, n) SELECT owner, state, COUNT(*) FROM run GROUP BY owner, state"
    )
