"""The fast tier: everything in process. Pure modules, the store on SQLite, and the Connexion
app through its test client over a real store, with no Gunicorn, supervisor or Toil leader
(a run submitted here stays QUEUED: nothing claims it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from wes_gateway import store
from wes_gateway.config import Settings, load_settings

DATA = Path(__file__).resolve().parent.parent / "data"
API = "/ga4gh/wes/v1"  # tests use fixtures, and spell the base out; nothing imports this file


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for one test, from nothing but these overrides (no environment, no file)."""
    return load_settings({}, data_dir=tmp_path / "data", container_engine="none", run_sandbox="none", run_disk="none")


@pytest.fixture
def db(settings: Settings) -> Iterator[Any]:
    """The store, migrated, on a SQLite file of this test's own."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = store.open_database(settings.effective_database_url)
    store.upgrade(database)
    yield database
    database.close()


@pytest.fixture
def app(settings: Settings) -> Any:
    from wes_gateway.web.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Any) -> Any:
    """Connexion's test client (Starlette's, over the ASGI app): real middlewares, real store."""
    return app.test_client()


@pytest.fixture
def submit(client: Any) -> Any:
    """POST /runs with a CWL attachment from tests/data, as a WES client sends it."""
    return partial(_submit, client)


def _submit(client: Any, workflow: str = "echo.cwl", params: dict[str, Any] | None = None, **fields: str) -> Any:
    form = {
        "workflow_type": "CWL",
        "workflow_type_version": "v1.2",
        "workflow_url": workflow,
        "workflow_params": json.dumps(params if params is not None else {"message": "hi"}),
        **fields,
    }
    files = {"workflow_attachment": (workflow, (DATA / workflow).read_bytes())}
    return client.post(f"{API}/runs", data=form, files=files)
