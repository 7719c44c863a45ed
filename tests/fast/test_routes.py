"""The route map (web/routes.py): every operation of openapi/wes.yaml resolves, the public
set is the YAML's `security: []` set, and the middlewares read the one resolution."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from wes_gateway.config import Settings, load_settings
from wes_gateway.web import routes
from wes_gateway.web.routes import RouteTable, normalise_path

API = "/ga4gh/wes/v1"
SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi" / "wes.yaml").read_text())
OPERATIONS = [
    (method.upper(), template, item[method]["operationId"], item[method].get("security"))
    for template, item in SPEC["paths"].items()
    for method in ("get", "post", "put", "patch", "delete")
    if method in item
]


def concrete(template: str) -> str:
    """A path of the template, each parameter a sample value ({path} with a slash in it)."""
    return re.sub(r"\{([^}]+)\}", lambda m: "d/e.txt" if m.group(1) == "path" else f"x-{m.group(1)}", template)


@pytest.fixture
def table(settings: Settings) -> RouteTable:
    return RouteTable(settings, API)


@pytest.mark.parametrize("method, template, operation_id, _security", OPERATIONS)
def test_every_operation_of_the_yaml_resolves(
    table: RouteTable, method: str, template: str, operation_id: str, _security: Any
) -> None:
    route = table.resolve(method, API + concrete(template))
    assert route.area == "api" and route.label == template
    assert route.operation_id == operation_id
    expected = {name: ("d/e.txt" if name == "path" else f"x-{name}") for name in re.findall(r"\{([^}]+)\}", template)}
    assert dict(route.params) == expected


def test_the_public_operations_are_the_yamls_security_none_ones(table: RouteTable) -> None:
    in_yaml = {operation_id for _m, _t, operation_id, security in OPERATIONS if security == []}
    assert in_yaml == {"GetServiceInfo", "get_health"}
    assert {op.operation_id for op in table.operations() if op.public} == in_yaml
    assert len(table.operations()) == len(OPERATIONS)


def test_a_setting_puts_service_info_behind_credentials(tmp_path: Path) -> None:
    protected = RouteTable(load_settings({}, data_dir=tmp_path, auth_service_info=True), API)
    assert not protected.resolve("GET", f"{API}/service-info").public
    assert protected.resolve("GET", f"{API}/health").public
    assert set(routes.SETTING_PROTECTED) <= {op for _m, _t, op, security in OPERATIONS if security == []}


def test_an_unknown_path_resolves_to_no_operation(table: RouteTable) -> None:
    for path in (f"{API}/nope", f"{API}/runs/a/b/c", "/elsewhere", f"{API}/runs/x/outputs.zip/more"):
        route = table.resolve("GET", path)
        assert route.operation is None and route.methods is None and not route.public, path
        assert route.area == "none" and route.label == "other"


def test_a_wrong_method_keeps_the_path_but_has_no_operation(table: RouteTable) -> None:
    route = table.resolve("DELETE", f"{API}/runs")
    assert route.area == "api" and route.label == "/runs" and route.operation is None
    assert route.methods == ("GET", "POST", "HEAD", "OPTIONS")
    assert not route.public
    # A method /health does not take is still /health's: public, so that it is a 405, not a 401.
    assert table.resolve("POST", f"{API}/health").public


def test_head_is_the_get_operation(table: RouteTable) -> None:
    assert table.resolve("HEAD", f"{API}/runs/r1/status").operation_id == "GetRunStatus"
    assert table.resolve("OPTIONS", f"{API}/runs/r1/status").operation is None


def test_literal_paths_win_over_parameters(table: RouteTable) -> None:
    assert table.resolve("GET", f"{API}/runs/r1/outputs.zip").operation_id == "get_run_outputs_zip"
    assert table.resolve("GET", f"{API}/runs/r1/outputs").operation_id == "get_run_outputs"
    assert table.resolve("GET", f"{API}/runs/r1/outputs/a/b").params == {"run_id": "r1", "path": "a/b"}
    assert table.resolve("GET", f"{API}/runs/r1/tasks/t1").operation_id == "GetTask"


@pytest.mark.parametrize(
    "raw, folded",
    [
        ("//ga4gh/wes/v1/runs", "/ga4gh/wes/v1/runs"),
        ("/ga4gh//wes/./v1/runs/", "/ga4gh/wes/v1/runs/"),
        ("/ga4gh/wes/v1/x/../runs", "/ga4gh/wes/v1/runs"),
        ("/ga4gh/wes/v1/runs", "/ga4gh/wes/v1/runs"),
    ],
)
def test_one_spelling_of_every_path(table: RouteTable, raw: str, folded: str) -> None:
    assert normalise_path(raw) == folded
    route = table.resolve("GET", raw)
    assert route.path == folded and route.raw_path == raw and route.operation_id == "ListRuns"


@pytest.mark.parametrize(
    "path, area, public",
    [
        (f"{API}/openapi.json", "spec", True),
        (f"{API}/openapi.yaml", "spec", True),
        (f"{API}/ui/", "docs", True),
        ("/ui/static/ui.css", "ui-static", True),
        ("/ui/login", "ui-login", True),
        ("/ui/login/", "ui-login", True),
        ("/ui", "ui", False),
        ("/ui/runs/abc", "ui", False),
        ("/metrics", "metrics", True),
        ("/metrics/", "metrics", False),
        ("/", "root", True),
        (f"{API}/openapi.json/x", "none", False),
    ],
)
def test_the_pages_outside_the_operations(table: RouteTable, path: str, area: str, public: bool) -> None:
    route = table.resolve("GET", path)
    assert (route.area, route.public, route.operation) == (area, public, None)


def test_the_spec_is_read_once() -> None:
    assert routes.spec() is routes.spec()


def test_wrong_methods_are_405_with_allow_from_the_map(client: Any) -> None:
    response = client.delete(f"{API}/runs")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, HEAD, OPTIONS"
    assert set(response.json()) == {"msg", "status_code"} and response.json()["status_code"] == 405
    options = client.options(f"{API}/runs/r1/cancel")
    assert options.status_code == 204 and options.headers["allow"] == "POST, OPTIONS"


def test_unknown_paths_are_a_404_error_response(client: Any) -> None:
    response = client.get(f"{API}/no-such-thing")
    assert response.status_code == 404 and response.json()["status_code"] == 404


def test_a_task_route_refusal_is_a_404(client: Any, submit: Any) -> None:
    run_id = submit().json()["run_id"]
    # An unparseable page_size is a 400 elsewhere; the task routes document only 404.
    assert client.get(f"{API}/runs?page_size=abc").status_code == 400
    assert client.get(f"{API}/runs/{run_id}/tasks?page_size=abc").status_code == 404


def test_the_access_log_labels_by_template_and_logs_the_path_as_sent(
    client: Any, submit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from wes_gateway import metrics

    run_id = submit().json()["run_id"]
    before = _count(metrics.get().requests, "GET", "/runs/{run_id}/status")
    with caplog.at_level("INFO", logger="wes_gateway.access"):
        assert client.get(f"{API}/runs/{run_id}/status").status_code == 200
    assert _count(metrics.get().requests, "GET", "/runs/{run_id}/status") == before + 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "wes_gateway.access"]
    assert f'"GET {API}/runs/{run_id}/status" 200' in line


def _count(histogram: Any, method: str, route: str) -> float:
    """Requests observed for the method and route label, whatever their status."""
    return sum(
        float(sample.value)
        for metric in histogram.collect()
        for sample in metric.samples
        if sample.name.endswith("_count") and sample.labels.get("route") == route and sample.labels["method"] == method
    )


def test_events_are_served_from_the_map(client: Any, submit: Any) -> None:
    run_id = submit().json()["run_id"]
    # Served by the event-stream middleware: another user's or no run is a 404 before any stream.
    response = client.get(f"{API}/runs/nope/events")
    assert response.status_code == 404 and "run nope not found" in response.json()["msg"]
    assert client.head(f"{API}/runs/{run_id}/events/x").status_code == 404
