"""Schema migrations on SQLite: a store created at every earlier version upgrades to the same
schema as a new one, keeping its rows; the migrations are frozen (none imports today's models)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import peewee
import pytest

from wes_gateway import store

from .store_helpers import VERSIONS, assert_rows_survived, build_at, schema_of

MIGRATIONS_DIR = Path(store.__file__).parent / "migrations"


def _open(path: Path) -> peewee.Database:
    return store.open_database(f"sqlite:///{path}")


@pytest.fixture(scope="module")
def fresh_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = _open(tmp_path_factory.mktemp("fresh") / "fresh.sqlite3")
    assert store.upgrade(db) == list(range(1, store.SCHEMA_VERSION + 1))
    schema = schema_of(db)
    db.close()
    return schema


@pytest.mark.parametrize("version", VERSIONS)
def test_a_store_of_every_earlier_version_upgrades_keeping_its_rows(
    version: int, tmp_path: Path, fresh_schema: dict[str, Any]
) -> None:
    db = _open(tmp_path / f"v{version}.sqlite3")
    written = build_at(db, version)
    assert store.current_version(db) == version
    assert set(written) == {t for t in ("run", "task", "api_token", "run_event", "login_failure") if db.table_exists(t)}
    assert store.upgrade(db) == list(range(version + 1, store.SCHEMA_VERSION + 1))
    assert store.current_version(db) == store.SCHEMA_VERSION
    assert schema_of(db) == fresh_schema
    assert_rows_survived(db, written)
    db.close()


def test_the_migrated_columns_are_todays_models(tmp_path: Path, fresh_schema: dict[str, Any]) -> None:
    # The models the code queries, created directly, have the columns (names, types, nulls,
    # keys) that the migrations build: a field added to a model without a migration fails here.
    db = _open(tmp_path / "models.sqlite3")
    models = [store.SchemaVersion, store.Run, store.Task, store.RunTag, store.RunEvent]
    models += [store.LoginFailure, store.ApiToken, store.StateCount]
    db.create_tables(models)
    direct = schema_of(db)
    assert set(direct) - {"triggers"} == set(fresh_schema) - {"triggers"}
    for table in direct.keys() - {"triggers"}:
        made, migrated = direct[table], fresh_schema[table]
        assert made["columns"] == migrated["columns"], table
        # The migrations add indexes of their own in SQL; the models' must be there (the
        # first run table's have other names: INDEX_NAMES).
        shapes = {(unique, tuple(columns)) for unique, columns in migrated["indexes"].values()}
        assert {(unique, tuple(columns)) for unique, columns in made["indexes"].values()} <= shapes, table
    db.close()


# The indexes of every store the migrations have built since the first table of runs took the
# name RunV1: what deployed databases have. A frozen table renamed would rename its indexes.
INDEX_NAMES = [
    "apitoken_token_hash",
    "loginfailure_key_at",
    "run_owner_state",
    "run_state_id",
    "run_submitted_at",
    "run_workflow_type_id",
    "runevent_run_id_id",
    "runtag_digest_run_pk",
    "runtag_run_pk",
    "runv1_owner_id",
    "runv1_run_id",
    "runv1_state",
    "sqlite_autoindex_state_count_1",
    "task_run_id_batch_id",
    "task_run_id_id",
    "task_run_id_task_id",
]


def test_index_names_are_those_of_deployed_stores(fresh_schema: dict[str, Any]) -> None:
    names = [name for table, found in fresh_schema.items() if table != "triggers" for name in found["indexes"]]
    assert sorted(names) == INDEX_NAMES


def _todays_models_imported(source: str) -> list[str]:
    """The imports of a migration's source that reach the project's own code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "wes_gateway"]
        elif isinstance(node, ast.ImportFrom):
            if node.level or (node.module or "").split(".")[0] == "wes_gateway":
                found.append("." * node.level + (node.module or ""))
    return found


def test_no_migration_imports_todays_models() -> None:
    files = sorted(MIGRATIONS_DIR.glob("m[0-9][0-9][0-9]_*.py"))
    assert len(files) == store.SCHEMA_VERSION
    for path in files:
        assert _todays_models_imported(path.read_text()) == [], path.name


@pytest.mark.parametrize(
    "planted",
    [
        "from wes_gateway.store.schema import Task",
        "from wes_gateway import store",
        "import wes_gateway.store.schema as schema",
        "from ..schema import Run",
        "def migrate(db):\n    from wes_gateway.store import Run\n",
    ],
)
def test_the_import_check_catches_a_migration_that_reads_todays_models(planted: str) -> None:
    frozen = (MIGRATIONS_DIR / "m002_tasks.py").read_text()
    assert _todays_models_imported(frozen) == []
    assert _todays_models_imported(frozen + "\n" + planted + "\n") != []


def test_sqlite_schema_has_the_count_triggers(fresh_schema: dict[str, Any]) -> None:
    # The comparison above covers triggers only if there are some to compare.
    names = [row[0] for row in fresh_schema["triggers"]]
    assert names == ["run_count_delete", "run_count_insert", "run_count_update"]
