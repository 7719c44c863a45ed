"""GET /runs filters, sort order and counts (extensions), through real Gunicorn on a store
seeded with runs of every kind; paging stays exact while runs are submitted between pages."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import DATA, Server, start_server, stop_server

from harness.records import record_run
from wes_gateway import store

STATES = ["COMPLETE", "EXECUTOR_ERROR", "CANCELED", "QUEUED"]


def seed(data_dir: Path, count: int) -> list[dict[str, object]]:
    """Runs through create_run (as a submission makes them), then given states and times."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store.open_database(f"sqlite:///{data_dir / 'wes.sqlite3'}")
    store.upgrade(store.database.obj)
    made = []
    for i in range(count):
        kind = "WDL" if i % 3 == 0 else "CWL"
        tags = {"project": f"p{i % 4}", "sample": f"s{i}"}
        if i % 5 == 0:
            tags["batch"] = "weekly: a value with a colon"
        state = STATES[i % len(STATES)]
        submitted = f"2026-11-{1 + i // 10:02d}T{i % 10:02d}:00:00Z"
        run_id = record_run(
            tags=tags, workflow_url="x", workflow_type=kind, version="1.0", state=state, submitted_at=submitted
        )
        made.append({"run_id": run_id, "state": state, "type": kind, "tags": tags, "submitted": submitted, "i": i})
    store.database.close()
    return made


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[dict[str, object]]]]:
    data_dir = tmp_path_factory.mktemp("filters")
    runs = seed(data_dir, 120)
    server = start_server(data_dir, {"WES_GATEWAY_SUPERVISOR": "off"})
    yield server, runs
    stop_server(server)


def all_pages(server: Server, **params: object) -> list[str]:
    found: list[str] = []
    token = ""
    for _ in range(100):
        response = server.get("/runs", params={**params, "page_size": 7, "page_token": token})
        assert response.status_code == 200, response.text
        body = response.json()
        found += [run["run_id"] for run in body["runs"]]
        token = body["next_page_token"]
        if not token:
            return found
    raise AssertionError("more than 100 pages")


def expected(runs: list[dict[str, object]], keep, ascending: bool = False) -> list[str]:  # type: ignore[no-untyped-def]
    chosen = [run for run in runs if keep(run)]
    ordered = chosen if ascending else list(reversed(chosen))
    return [str(run["run_id"]) for run in ordered]


def test_filters_each_and_together(seeded: tuple[Server, list[dict[str, object]]]) -> None:
    server, runs = seeded
    assert all_pages(server) == expected(runs, lambda r: True)
    assert all_pages(server, state="COMPLETE") == expected(runs, lambda r: r["state"] == "COMPLETE")
    both = ["COMPLETE", "CANCELED"]
    assert all_pages(server, state=both) == expected(runs, lambda r: r["state"] in both)
    assert all_pages(server, tag="project:p1") == expected(runs, lambda r: r["tags"]["project"] == "p1")
    # The value may hold colons: only the first one separates the key.
    weekly = "batch:weekly: a value with a colon"
    assert all_pages(server, tag=weekly) == expected(runs, lambda r: "batch" in r["tags"])
    assert all_pages(server, tag=["project:p0", "batch:weekly: a value with a colon"]) == expected(
        runs, lambda r: r["tags"]["project"] == "p0" and "batch" in r["tags"]
    )
    assert all_pages(server, workflow_type="wdl") == expected(runs, lambda r: r["type"] == "WDL")
    since, until = "2026-11-03T00:00:00Z", "2026-11-05T05:00:00+00:00"
    assert all_pages(server, since=since, until=until) == expected(
        runs, lambda r: "2026-11-03T00:00:00Z" <= r["submitted"] <= "2026-11-05T05:00:00Z"
    )
    # An offset is converted, not ignored: 01:00+01:00 is midnight UTC.
    assert all_pages(server, since="2026-11-12T01:00:00+01:00") == expected(
        runs, lambda r: r["submitted"] >= "2026-11-12T00:00:00Z"
    )
    together = {"state": "QUEUED", "workflow_type": "CWL", "tag": "project:p3", "since": "2026-11-02T00:00:00Z"}
    assert all_pages(server, **together) == expected(
        runs,
        lambda r: (
            r["state"] == "QUEUED"
            and r["type"] == "CWL"
            and r["tags"]["project"] == "p3"
            and r["submitted"] >= "2026-11-02T00:00:00Z"
        ),
    )
    assert all_pages(server, sort_order="asc", state="CANCELED") == expected(
        runs, lambda r: r["state"] == "CANCELED", ascending=True
    )
    assert all_pages(server, tag="project:nobody") == []


def test_count_is_the_whole_match_not_the_page(seeded: tuple[Server, list[dict[str, object]]]) -> None:
    server, runs = seeded
    body = server.get("/runs", params={"state": "COMPLETE", "count": "true", "page_size": 5}).json()
    assert len(body["runs"]) == 5
    assert body["total_runs"] == sum(1 for r in runs if r["state"] == "COMPLETE")
    assert "total_runs" not in server.get("/runs").json()  # only when asked: WES 1.1 has no such field


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"state": "FINISHED"}, "state"),
        ({"tag": "no-colon"}, "tag"),
        # Each tag filter is a join: past SQLite's limit of 64 that was a 500.
        ({"tag": [f"k{i}:v" for i in range(80)]}, "tag"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-11-01T00:00:00"}, "until"),
        ({"sort_order": "sideways"}, "sort_order"),
        ({"count": "maybe"}, "count"),
    ],
)
def test_bad_filters_are_precise_400s(
    seeded: tuple[Server, list[dict[str, object]]], params: dict[str, object], says: str
) -> None:
    server, _ = seeded
    response = server.get("/runs", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status_code"] == 400 and says in body["msg"], body


def test_the_run_browser_keeps_the_apis_tag_limit(seeded: tuple[Server, list[dict[str, object]]]) -> None:
    server, _ = seeded
    api = server.get("/runs", params={"tag": [f"k{i}:v" for i in range(17)]})
    assert api.status_code == 400, api.text
    for count in (16, 17, 64):
        tags = [f"k{i}:v{i}" for i in range(count)]
        # Repeated, as the API takes them, and in the one field of the page's form.
        for params in ({"tag": tags}, {"tag": " ".join(tags)}):
            page = requests.get(f"{server.base}/ui/", params=params, timeout=30)
            if count <= 16:
                assert page.status_code == 200, page.text[-500:]
                assert 'class="error"' not in page.text
            else:
                assert page.status_code == 400, (count, page.status_code, page.text[-500:])
                assert "text/html" in page.headers["Content-Type"]
                assert f"at most 16 tag filters (given {count})" in page.text, page.text[-800:]


def test_a_token_keeps_its_sort_order(seeded: tuple[Server, list[dict[str, object]]]) -> None:
    server, _ = seeded
    token = server.get("/runs", params={"page_size": 2}).json()["next_page_token"]
    response = server.get("/runs", params={"page_size": 2, "page_token": token, "sort_order": "asc"})
    assert response.status_code == 400 and "sort_order" in response.json()["msg"]


def test_paging_under_filters_is_exact_while_runs_arrive(tmp_path: Path) -> None:
    data_dir = tmp_path / "arrivals"
    seed(data_dir, 40)
    server = start_server(data_dir, {"WES_GATEWAY_SUPERVISOR": "off"})

    def arrive() -> str:
        return server.submit_ok(
            {"echo.cwl": DATA / "echo.cwl"},
            workflow_url="echo.cwl",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"message": "late"},
            tags={"project": "p2"},
        )

    try:
        for ascending in (False, True):
            before = all_pages(server, tag="project:p2", sort_order="asc" if ascending else "desc")
            seen: list[str] = []
            arrived: list[str] = []
            token = ""
            params = {"tag": "project:p2", "sort_order": "asc" if ascending else "desc", "page_size": 2}
            for step in itertools.count():
                assert step < 100
                body = server.get("/runs", params={**params, "page_token": token}).json()
                seen += [run["run_id"] for run in body["runs"]]
                if step < 4:  # a matching run arrives between pages
                    arrived.append(arrive())
                token = body["next_page_token"]
                if not token:
                    break
            assert len(seen) == len(set(seen)), "a run appeared twice"
            if ascending:
                # Oldest first: what was there, then every arrival, in order; no gap.
                assert seen == before + arrived
            else:
                # Newest first: exactly what was there at the first page; arrivals are newer.
                assert seen == before
    finally:
        stop_server(server)
