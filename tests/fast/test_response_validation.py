"""Response validation is live: a response that breaks the YAML fails loudly (the e2e
servers run with it on), so every JSON response they see has been checked against the
contract; and with it off the same response goes out."""

from __future__ import annotations

from typing import Any

import pytest

from wes_gateway.config import Settings
from wes_gateway.web import handlers
from wes_gateway.web.app import create_app


def checked(settings: Settings, on: bool) -> Any:
    return create_app(settings.model_copy(update={"response_validation": on})).test_client()


def test_a_response_outside_the_contract_is_caught(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert checked(settings, True).get("/ga4gh/wes/v1/runs").status_code == 200
    monkeypatch.setattr(
        handlers, "list_runs", lambda **_: {"runs": [{"run_id": 7, "state": "BOGUS"}], "next_page_token": ""}
    )
    response = checked(settings, True).get("/ga4gh/wes/v1/runs")
    assert response.status_code == 500 and response.json()["status_code"] == 500
    # The protection off: the same broken response goes out as it is.
    unchecked = checked(settings, False).get("/ga4gh/wes/v1/runs")
    assert unchecked.status_code == 200 and unchecked.json()["runs"][0]["state"] == "BOGUS"
