"""No input makes a 5xx: hypothesis over POST /runs's form fields and attachment names, and
over the query parameters of every GET, against a real Gunicorn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import Server, start_server, stop_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

D = Path(__file__).parent.parent / "data"
FIELDS = [
    "workflow_url",
    "workflow_type",
    "workflow_type_version",
    "workflow_params",
    "tags",
    "workflow_engine_parameters",
    "workflow_engine",
    "workflow_engine_version",
]


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No supervisor: whatever the fuzzer gets accepted stays QUEUED instead of running.
    server = start_server(tmp_path_factory.mktemp("fuzz"), {"WES_GATEWAY_SUPERVISOR": "off"})
    yield server
    stop_server(server)


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
).map(json.dumps)
field_value = st.one_of(
    text,
    json_text,
    st.sampled_from(["CWL", "WDL", "cwl", "v1.2", "1.0", "echo.cwl", "echo.cwl#main", "file:///etc/passwd", "toil"]),
)
names = st.one_of(
    text.filter(bool),
    st.sampled_from(["echo.cwl", "a/b.txt", "../x", "/abs", "C:\\x", "a//b", ".", "x" * 300, "d", "d/x", "%2e%2e/y"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    form=st.dictionaries(st.sampled_from([*FIELDS, "workflow_param", "x"]), field_value, max_size=8),
    attachments=st.lists(st.tuples(names, st.binary(max_size=64)), max_size=4),
    with_echo=st.booleans(),
)
def test_post_runs_never_5xx(quiet: Server, form: dict[str, str], attachments: list, with_echo: bool) -> None:
    files = [("workflow_attachment", (name, body)) for name, body in attachments]
    if with_echo:
        files.append(("workflow_attachment", ("echo.cwl", (D / "echo.cwl").read_bytes())))
    response = requests.post(quiet.api + "/runs", data=form, files=files or None, timeout=60)
    assert response.status_code < 500, (form, attachments, response.text)
    body = response.json()
    assert set(body) in ({"run_id"}, {"msg", "status_code"}), body


GET_ROUTES = ["/runs", "/runs/{id}", "/runs/{id}/status", "/runs/{id}/tasks", "/runs/{id}/tasks/{id}", "/service-info"]
QUERY = ["page_size", "page_token", "state", "tag", "since", "until", "sort_order", "count", "x"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(GET_ROUTES),
    ident=st.one_of(text.filter(lambda t: "/" not in t and t not in (".", "..")), st.just("k1:99999999999999999999")),
    query=st.dictionaries(
        st.sampled_from(QUERY),
        st.one_of(text, st.integers(min_value=-(2**70), max_value=2**70).map(str), st.sampled_from(["k1:-1", "zz"])),
        max_size=5,
    ),
)
def test_get_routes_never_5xx(quiet: Server, route: str, ident: str, query: dict[str, str]) -> None:
    path = route.replace("{id}", requests.utils.quote(ident, safe="") or "x")
    response = requests.get(quiet.api + path, params=query, timeout=30)
    assert response.status_code < 500, (path, query, response.text)
