"""The integration paths again with the store on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, start_server, stop_server
from postgres import Postgres
from test_durability import assert_storm_completes, slow_echo, submit_storm

from wes_gateway import store

D = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def pg_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("wes-pg"), {"WES_GATEWAY_DATABASE_URL": postgres.url}, workers=4)
    yield server
    stop_server(server)


def test_store_is_postgres(postgres: Postgres, pg_server: Server) -> None:
    db = store.open_database(postgres.url)
    try:
        assert type(db).__name__.startswith("Postgres")
        assert store.current_version(db) == store.SCHEMA_VERSION
    finally:
        db.close()
    assert not (pg_server.data_dir / "wes.sqlite3").exists()


def test_run_tasks_and_cancel_on_postgres(pg_server: Server) -> None:
    run_id = pg_server.submit_ok(
        {
            "three_step.cwl": D / "three_step.cwl",
            "upper.cwl": D / "upper.cwl",
            "rev.cwl": D / "rev.cwl",
            "count.cwl": D / "count.cwl",
            "in.txt": b"postgres\n",
        },
        workflow_url="three_step.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"infile": {"class": "File", "location": "in.txt"}},
    )
    long_id = slow_echo(pg_server, "cancel me", seconds=120)
    assert pg_server.wait(run_id) == "COMPLETE"
    tasks = pg_server.get(f"/runs/{run_id}/tasks", params={"page_size": 2}).json()
    assert [t["name"] for t in tasks["task_logs"]] == ["shout", "reverse"] and tasks["next_page_token"]
    pg_server.wait(long_id, {"RUNNING"})
    pg_server.post(f"/runs/{long_id}/cancel")
    assert pg_server.wait(long_id, timeout=60) == "CANCELED"
    info = pg_server.get("/service-info").json()
    assert info["system_state_counts"]["COMPLETE"] >= 1 and info["system_state_counts"]["CANCELED"] >= 1


def test_200_concurrent_submissions_on_postgres(pg_server: Server) -> None:
    assert_storm_completes(pg_server, submit_storm(pg_server))


def test_a_committed_run_notifies_listening_supervisors(postgres: Postgres) -> None:
    import select

    store.upgrade(store.open_database(postgres.url))
    listener = store.listen_for_work()
    try:
        assert listener is not None
        assert select.select([listener], [], [], 0.2)[0] == []  # nothing yet
        store.create_run(
            store.NewRun(
                run_id=store.new_run_id(),
                owner="notify-test",
                workflow_type="CWL",
                request={},
                engine_args=[],
                workflow_path="/nonexistent.cwl",
                tags={},
            )
        )
        # Another host's supervisor hears of it at once, not at its next poll.
        assert select.select([listener], [], [], 5)[0] == [listener]
        store.drain_work(listener)
        assert select.select([listener], [], [], 0.2)[0] == []
    finally:
        listener.close()
        store.database.obj.close()


def test_the_first_page_walks_the_key_index_backward_on_postgres(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # #38: the first page of GET /runs, everyone's and a user's, either way round, is an index
    # scan in the key's order stopped at the limit; never a sequential scan, never a sort of
    # every match. Statistics as autovacuum keeps them (without any, PostgreSQL guesses a
    # user's runs from the (owner, state) index and sorts them all, whatever the query).
    import psycopg2

    from harness.records import FIRST_PAGES, bulk_runs, statements

    admin = psycopg2.connect(postgres.url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("CREATE DATABASE wes_pages")
    admin.close()
    db = store.open_database(postgres.url.rsplit("/", 1)[0] + "/wes_pages")
    try:
        store.upgrade(db)
        bulk_runs(10000, lambda n: "alice" if n % 3 == 0 else f"user{n % 7}")
        db.execute_sql("ANALYZE run")
        sent = statements(db, monkeypatch)
        for name, (where, ascending) in FIRST_PAGES.items():
            sent.clear()
            rows, token = store.list_runs(100, None, where, ascending=ascending)
            assert len(rows) == 100 and token, name
            (sql, params) = next((s, p) for s, p in sent if s.startswith("SELECT"))
            plan = [row[0] for row in db.execute_sql(f"EXPLAIN {sql}", params)]
            assert not any("Seq Scan" in step or "Sort" in step for step in plan), (name, plan)
            scan = "Index Scan using" if ascending else "Index Scan Backward using"
            assert any(scan in step for step in plan), (name, plan)
    finally:
        db.close()
