"""Schema migrations on a real PostgreSQL server: a store created at every earlier version
upgrades to the same schema as a new one (columns and their types, indexes, triggers and the
trigger function), keeping its rows. The SQLite twin is tests/fast/test_migrations.py, whose
helpers this file loads by path (tests/fast is a package of its own)."""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest
from postgres import Postgres

from wes_gateway import store

_spec = importlib.util.spec_from_file_location(
    "store_helpers", Path(__file__).resolve().parent.parent / "fast" / "store_helpers.py"
)
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def _createdb(pg: Postgres, name: str) -> str:
    port = pg.url.rsplit(":", 1)[1].split("/")[0]
    argv = [str(pg.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", name]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def fresh_schema(postgres: Postgres) -> dict[str, Any]:
    db = store.open_database(_createdb(postgres, "fresh"))
    assert store.upgrade(db) == list(range(1, store.SCHEMA_VERSION + 1))
    schema: dict[str, Any] = helpers.schema_of(db)
    db.close()
    return schema


@pytest.fixture
def old_db(postgres: Postgres, request: pytest.FixtureRequest) -> Iterator[peewee.Database]:
    db = store.open_database(_createdb(postgres, f"v{request.node.callspec.params['version']}"))
    yield db
    db.close()


@pytest.mark.parametrize("version", helpers.VERSIONS)
def test_a_postgres_store_of_every_earlier_version_upgrades_keeping_its_rows(
    version: int, old_db: peewee.Database, fresh_schema: dict[str, Any]
) -> None:
    written = helpers.build_at(old_db, version)
    assert store.current_version(old_db) == version
    if 1 <= version < 6:  # the first schema's leases were REAL; migration 6 makes them doubles
        types = {column[0]: column[1] for column in helpers.schema_of(old_db)["run"]["columns"]}
        assert types["lease_until"] == "real"
    assert store.upgrade(old_db) == list(range(version + 1, store.SCHEMA_VERSION + 1))
    assert helpers.schema_of(old_db) == fresh_schema
    helpers.assert_rows_survived(old_db, written)


def test_the_postgres_schema_has_what_the_comparison_covers(fresh_schema: dict[str, Any]) -> None:
    # The comparison above is only as good as what it compares: the count triggers and their
    # function, the indexes written in SQL, and double-precision leases.
    assert {row[0] for row in fresh_schema["triggers"]} == {"run_count_insert", "run_count_update", "run_count_delete"}
    assert [row[0] for row in fresh_schema["functions"]] == ["wes_run_count"]
    assert {"run_owner_state", "run_submitted_at", "run_state_id", "run_workflow_type_id"} <= set(
        fresh_schema["run"]["indexes"]
    )
    columns = {column[0]: column[1] for column in fresh_schema["run"]["columns"]}
    assert columns["lease_until"] == columns["heartbeat_at"] == "double precision"
