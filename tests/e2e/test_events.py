"""GET /runs/{id}/events (extension): one Server-Sent Events stream follows a run from QUEUED
to COMPLETE, and resumes after Last-Event-ID."""

from __future__ import annotations

import json
import time

import requests
from conftest import DATA, Server


def read_events(response: requests.Response, deadline: float) -> list[dict]:
    events: list[dict] = []
    current: dict = {}
    for raw in response.iter_lines(decode_unicode=True):
        assert time.monotonic() < deadline, "the stream did not end in time"
        if raw == "":
            if current:
                events.append(current)
                if current.get("event") == "end":
                    return events
            current = {}
            continue
        if raw.startswith(":"):
            continue
        field, _, value = raw.partition(": ")
        current[field] = json.loads(value) if field == "data" else value
    return events


def test_one_stream_follows_a_run_to_complete(server: Server) -> None:
    run_id = server.submit_ok(
        {"slow_echo.cwl": DATA / "slow_echo.cwl"},
        workflow_url="slow_echo.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"seconds": 3, "message": "streamed"},
    )
    with requests.get(f"{server.api}/runs/{run_id}/events", stream=True, timeout=(10, 60)) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(response, time.monotonic() + 180)
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states == ["QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"], states
    tasks = [(e["data"]["name"], e["data"]["status"]) for e in events if e["event"] == "task"]
    assert tasks == [("slow_echo.cwl", "started"), ("slow_echo.cwl", "ended")], tasks
    assert any(e["data"].get("exit_code") == 0 for e in events if e["event"] == "task")
    log_text = "".join(e["data"]["text"] for e in events if e["event"] == "log")
    on_disk = requests.get(server.get(f"/runs/{run_id}").json()["run_log"]["stderr"], timeout=30).text
    assert log_text == on_disk and log_text  # every line of the leader's log, once, in order
    assert events[-1]["event"] == "end"
    # The state order holds within the stream: RUNNING before the task ended, COMPLETE last.
    kinds = [(e["event"], e["data"].get("state") or e["data"].get("status")) for e in events]
    assert kinds.index(("state", "RUNNING")) < kinds.index(("task", "ended")) < kinds.index(("state", "COMPLETE"))

    # Resume after RUNNING: exactly what came after it, nothing twice. (Log lines may come in
    # other chunks on a resumed stream: their text is what must match.)
    running = next(e for e in events if e["event"] == "state" and e["data"]["state"] == "RUNNING")
    log_offset = int(running["id"].split(".")[1])
    with requests.get(
        f"{server.api}/runs/{run_id}/events", headers={"Last-Event-ID": running["id"]}, stream=True, timeout=(10, 60)
    ) as again:
        resumed = read_events(again, time.monotonic() + 60)
    after = events[events.index(running) + 1 :]

    def changes(stream: list[dict]) -> list[tuple[str, dict]]:
        return [(e["event"], e["data"]) for e in stream if e["event"] != "log"]

    assert changes(resumed) == changes(after)
    assert "".join(e["data"]["text"] for e in resumed if e["event"] == "log") == on_disk[log_offset:]


def test_events_of_unknown_runs_are_not_found(server: Server) -> None:
    response = requests.get(f"{server.api}/runs/nope/events", timeout=10)
    assert response.status_code == 404 and response.json()["status_code"] == 404


def test_event_ids_count_within_the_run(server: Server) -> None:
    """Event ids number a run's own events (1, 2, ...): a client learns nothing from them of
    how many events other users' runs had (they were the store's global counter)."""
    for _ in range(2):  # others' runs first, with their own events
        server.wait(server.submit_cwl(DATA / "echo.cwl", {"message": "other"}), timeout=180)
    run_id = server.submit_cwl(DATA / "echo.cwl", {"message": "mine"})
    server.wait(run_id, timeout=180)
    with requests.get(f"{server.api}/runs/{run_id}/events", stream=True, timeout=(10, 60)) as response:
        events = read_events(response, time.monotonic() + 60)
    numbers = [int(e["id"].split(".")[0]) for e in events if e["event"] in ("state", "task")]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
