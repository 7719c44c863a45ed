"""Bad requests get a precise 4xx ErrorResponse, and leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from conftest import Server, start_server, stop_server

ECHO = (Path(__file__).parent.parent / "data" / "echo.cwl").read_bytes()
GOOD = {
    "workflow_url": "echo.cwl",
    "workflow_type": "CWL",
    "workflow_type_version": "v1.2",
    "workflow_params": '{"message": "x"}',
}


def assert_error(response: requests.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"msg", "status_code"} and body["status_code"] == status
    for fragment in fragments:
        assert fragment in body["msg"], body["msg"]
    assert "Traceback" not in body["msg"]


def run_dirs(server: Server) -> set[str]:
    runs = server.data_dir / "runs"
    staging = runs / ".staging"
    leftovers = {p.name for p in staging.iterdir()} if staging.exists() else set()
    assert leftovers == set(), f"half-written staging directories: {leftovers}"
    return {p.name for p in runs.iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({k: v for k, v in GOOD.items() if k != "workflow_url"}, "workflow_url is required"),
        ({k: v for k, v in GOOD.items() if k != "workflow_type"}, "workflow_type is required"),
        ({k: v for k, v in GOOD.items() if k != "workflow_type_version"}, "workflow_type_version is required"),
        ({**GOOD, "workflow_params": "{not json"}, "workflow_params is not valid JSON"),
        ({**GOOD, "workflow_params": "[1, 2]"}, "workflow_params must be a JSON object"),
        ({**GOOD, "tags": '"text"'}, "tags must be a JSON object"),
        ({**GOOD, "tags": '{"n": 1}'}, "tags: the value of 'n' must be a string"),
        ({**GOOD, "workflow_engine_parameters": "{"}, "workflow_engine_parameters is not valid JSON"),
        ({**GOOD, "workflow_engine_parameters": '{"--setEnv": "A=1"}'}, "--setEnv is not allowed"),
        ({**GOOD, "workflow_engine_parameters": '{"--jobStore": "/tmp/x"}'}, "--jobStore is not allowed"),
        ({**GOOD, "workflow_engine_parameters": '{"--maxCores": "9999"}'}, "--maxCores must be between"),
        ({**GOOD, "workflow_type": "nextflow"}, "workflow_type 'nextflow' is not supported"),
        ({**GOOD, "workflow_type_version": "v9.9"}, "workflow_type_version 'v9.9' is not supported"),
        ({**GOOD, "workflow_engine": "cromwell"}, "workflow_engine 'cromwell' is not supported"),
        ({**GOOD, "workflow_engine_version": "0.1"}, "workflow_engine_version '0.1' is not available"),
        ({**GOOD, "workflow_url": "missing.cwl"}, "is neither an attachment nor an http(s) URL"),
        ({**GOOD, "workflow_url": "file:///etc/passwd"}, "outside the directories this service may read"),
        (
            {**GOOD, "workflow_params": '{"f": {"class": "File", "location": "file:///etc/passwd"}}'},
            "outside the directories this service may read",
        ),
        (
            {**GOOD, "workflow_params": '{"f": {"class": "File", "path": "/etc/passwd"}}'},
            "outside the directories this service may read",
        ),
        (
            {**GOOD, "workflow_params": '{"f": {"class": "File", "location": "nothere.txt"}}'},
            "is not among the attachments",
        ),
        ({**GOOD, "unexpected_field": "x"}, "unexpected_field"),
    ],
)
def test_bad_fields(server: Server, fields: dict[str, str], fragment: str) -> None:
    before = run_dirs(server)
    response = server.post("/runs", data=fields, files=[("workflow_attachment", ("echo.cwl", ECHO))])
    assert_error(response, 400, fragment)
    assert run_dirs(server) == before


@pytest.mark.parametrize("name", ["../escape.cwl", "a/../../escape.cwl", "/etc/cron.d/evil", "..", "./../escape.cwl"])
def test_traversal_attachment_names(server: Server, name: str) -> None:
    before = run_dirs(server)
    response = server.post(
        "/runs", data=GOOD, files=[("workflow_attachment", ("echo.cwl", ECHO)), ("workflow_attachment", (name, b"x"))]
    )
    assert_error(response, 400, "workflow_attachment")
    assert run_dirs(server) == before
    assert not (server.data_dir / "escape.cwl").exists()


def test_invalid_cwl_names_the_problem(server: Server, data: Path) -> None:
    before = run_dirs(server)
    response = server.post(
        "/runs",
        data={**GOOD, "workflow_url": "invalid.cwl"},
        files=[("workflow_attachment", ("invalid.cwl", (data / "invalid.cwl").read_bytes()))],
    )
    assert_error(response, 400, "invalid CWL document", "strnig")
    assert run_dirs(server) == before


def test_not_multipart(server: Server) -> None:
    assert_error(server.post("/runs"), 400, "multipart/form-data")
    assert_error(server.post("/runs", data="x", headers={"Content-Type": "text/plain"}), 400, "multipart/form-data")
    # A JSON RunRequest is the json-run-request extension: it has no attachments to name.
    body = {**GOOD, "workflow_params": {"message": "x"}}
    assert_error(server.post("/runs", json=body), 400, "'echo.cwl' is neither an attachment")


def test_unknown_run_everywhere(server: Server) -> None:
    for path in (
        "/runs/nope",
        "/runs/nope/status",
        "/runs/nope/tasks",
        "/runs/nope/tasks/t1",
        "/runs/nope/logs/stdout",
    ):
        assert_error(server.get(path), 404, "nope")
    assert_error(server.post("/runs/nope/cancel"), 404, "nope")


def test_routing_errors_are_error_responses(server: Server) -> None:
    assert_error(requests.get(server.base + "/no/such/route", timeout=10), 404)
    assert_error(requests.delete(server.api + "/runs", timeout=10), 405)
    assert_error(server.get("/runs?page_size=abc"), 400, "integer")
    assert_error(server.get(f"/runs?page_size={2**63}"), 400, "maximum")
    assert_error(server.get("/runs?page_token=garbage"), 400, "page_token")
    assert_error(server.get("/runs/x/logs/other"), 400)


def test_page_size_zero_means_the_default_and_unknown_parameters_are_ignored(server: Server) -> None:
    # WES: a server picks the page size when the client does not; extra query parameters are
    # not the client's error (the official contract's coverage phase sends both).
    for query in ("page_size=0", "page_size=-5", "bogus=1", "page_size=1&x-extra=y"):
        response = server.get(f"/runs?{query}")
        assert response.status_code == 200, (query, response.text)
        assert "runs" in response.json()


def test_options_lists_the_methods_of_a_route(server: Server) -> None:
    for path, methods in (
        ("/runs", {"GET", "POST", "HEAD", "OPTIONS"}),
        ("/runs/x/cancel", {"POST", "OPTIONS"}),
        ("/service-info", {"GET", "HEAD", "OPTIONS"}),
    ):
        response = requests.options(server.api + path, timeout=10)
        assert response.status_code == 204, (path, response.text)
        assert {m.strip() for m in response.headers["Allow"].split(",")} == methods, path
    refused = requests.put(server.api + "/runs", timeout=10)
    assert refused.status_code == 405
    assert {m.strip() for m in refused.headers["Allow"].split(",")} == {"GET", "POST", "HEAD", "OPTIONS"}


def test_a_locked_database_is_a_503_with_retry_after(tmp_path: Path, data: Path) -> None:
    import sqlite3

    server = start_server(tmp_path / "data", {"WES_GATEWAY_SUPERVISOR": "off"})
    holder = sqlite3.connect(tmp_path / "data" / "wes.sqlite3", timeout=1, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # held past the service's 30 s busy timeout
        response = server.submit(
            {"echo.cwl": data / "echo.cwl"},
            workflow_url="echo.cwl",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"message": "x"},
        )
        holder.execute("ROLLBACK")
        assert response.status_code == 503, response.text
        assert response.json()["status_code"] == 503 and "try again" in response.json()["msg"]
        assert int(response.headers["Retry-After"]) > 0
        # Nothing half-written: no run directory was left behind.
        assert [p.name for p in (tmp_path / "data" / "runs").iterdir() if not p.name.startswith(".")] == []
        assert server.get("/runs").json()["runs"] == []
    finally:
        holder.close()
        stop_server(server)
