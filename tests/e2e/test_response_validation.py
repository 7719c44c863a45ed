"""The fixture's response validation is live: a response that breaks the YAML fails loudly,
so every JSON response the integration tests see has been checked against the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from wes_gateway.config import load_settings
from wes_gateway.web import handlers
from wes_gateway.web.app import create_app


def test_a_response_outside_the_contract_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The integration fixtures start every server with WES_GATEWAY_RESPONSE_VALIDATION=true.
    client = create_app(load_settings({}, data_dir=tmp_path, response_validation=True)).test_client()
    assert client.get("/ga4gh/wes/v1/runs").status_code == 200
    monkeypatch.setattr(
        handlers, "list_runs", lambda **_: {"runs": [{"run_id": 7, "state": "BOGUS"}], "next_page_token": ""}
    )
    broken = create_app(load_settings({}, data_dir=tmp_path, response_validation=True)).test_client()
    response = broken.get("/ga4gh/wes/v1/runs")
    assert response.status_code == 500 and response.json()["status_code"] == 500
