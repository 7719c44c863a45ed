"""The app in process: a submission is recorded and listed, through every middleware."""

from __future__ import annotations

from typing import Any

API = "/ga4gh/wes/v1"


def test_a_submission_is_recorded_queued_and_listed(client: Any, submit: Any) -> None:
    response = submit()
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert client.get(f"{API}/runs/{run_id}/status").json() == {"run_id": run_id, "state": "QUEUED"}
    assert [run["run_id"] for run in client.get(f"{API}/runs").json()["runs"]] == [run_id]


def test_an_unknown_run_is_a_404_error_response(client: Any) -> None:
    response = client.get(f"{API}/runs/nope")
    assert response.status_code == 404
    assert set(response.json()) == {"msg", "status_code"}


def test_the_two_body_types_of_post_runs_leave_no_warning_per_request(client: Any, submit: Any, caplog: Any) -> None:
    import logging

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert submit().status_code == 200
    assert not [r for r in caplog.records if "multiple content types" in r.getMessage()]
