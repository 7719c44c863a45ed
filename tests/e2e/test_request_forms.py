"""The request forms other clients send (#34): RunRequest fields as file parts of the form,
and a JSON RunRequest body (the json-run-request extension)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, loopback_http, running_server
from test_bad_input import assert_error, run_dirs

ECHO = (Path(__file__).parent.parent / "data" / "echo.cwl").read_bytes()
FIELDS = {"workflow_url": "echo.cwl", "workflow_type": "CWL", "workflow_type_version": "v1.2"}


@pytest.fixture(scope="module")
def remote_echo() -> Iterator[str]:
    with loopback_http(ECHO) as base:
        yield base


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str], remote_echo: str) -> Iterator[Server]:
    # The loopback service's prefix, named: the default (https://) admits only public hosts.
    env = {**engine_env, "WES_GATEWAY_ALLOWED_URL_PREFIXES": remote_echo + "/"}
    with running_server(tmp_path_factory.mktemp("forms"), env) as server:
        yield server


def output_text(server: Server, run_id: str) -> str:
    out = server.get(f"/runs/{run_id}").json()["outputs"]["out"]
    return str(server.get(f"/runs/{run_id}/outputs/{out['basename']}").text)


def test_json_fields_as_file_parts(gateway: Server) -> None:
    files = [
        ("workflow_attachment", ("echo.cwl", ECHO)),
        ("workflow_params", ("params.json", b'\xef\xbb\xbf{"message": "from a file part"}', "application/json")),
        ("tags", ("tags.json", b'{"client": "dockstore-cli"}', "application/json")),
        ("workflow_engine_parameters", ("engine.json", b'{"--logLevel": "INFO"}', "application/json")),
    ]
    response = gateway.post("/runs", data=FIELDS, files=files)
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert gateway.wait(run_id) == "COMPLETE", gateway.system_logs(run_id)
    request = gateway.get(f"/runs/{run_id}").json()["request"]
    assert request["workflow_params"] == {"message": "from a file part"}
    assert request["tags"] == {"client": "dockstore-cli"}
    assert request["workflow_engine_parameters"] == {"--logLevel": "INFO"}
    assert output_text(gateway, run_id) == "from a file part\n"
    # The file parts were the fields' text, not attachments.
    assert sorted(p.name for p in (gateway.data_dir / "runs" / run_id / "attachments").iterdir()) == ["echo.cwl"]


@pytest.mark.parametrize(
    "field, body, status, fragments",
    [
        ("workflow_params", b"{not json", 400, ("workflow_params is not valid JSON", "file part")),
        ("workflow_params", b"[1]", 400, ("workflow_params must be a JSON object, not list",)),
        ("workflow_params", b'{"message": "\xff"}', 400, ("workflow_params: not UTF-8 text",)),
        ("tags", b'{"n": 1}', 400, ("tags: the value of 'n' must be a string",)),
        ("workflow_engine_parameters", b'{"--setEnv": "A=1"}', 400, ("--setEnv is not allowed",)),
        ("workflow_params", b" " * (16 * 1024 * 1024 + 1), 413, ("workflow_params:", "larger than")),
    ],
)
def test_malformed_file_parts_name_the_field(
    gateway: Server, field: str, body: bytes, status: int, fragments: tuple[str, ...]
) -> None:
    before = run_dirs(gateway)
    data = {**FIELDS, "workflow_params": '{"message": "x"}'}
    data.pop(field, None)
    files = [("workflow_attachment", ("echo.cwl", ECHO)), (field, ("f.json", body, "application/json"))]
    assert_error(gateway.post("/runs", data=data, files=files), status, *fragments)
    assert run_dirs(gateway) == before


def test_json_run_request(gateway: Server, remote_echo: str) -> None:
    body = {
        **FIELDS,
        "workflow_url": remote_echo + "/echo.cwl",
        "workflow_params": {"message": "from JSON"},
        "tags": {"form": "json"},
        "workflow_engine_parameters": {"--maxCores": 1, "--stats": None},
    }
    response = gateway.post("/runs", json=body)
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert gateway.wait(run_id) == "COMPLETE", gateway.system_logs(run_id)
    log = gateway.get(f"/runs/{run_id}").json()
    assert log["request"]["tags"] == {"form": "json"}
    assert log["request"]["workflow_engine_parameters"] == {"--maxCores": "1", "--stats": ""}
    assert output_text(gateway, run_id) == "from JSON\n"
    extensions = gateway.get("/service-info").json()["tags"]["extensions"].split(",")
    assert "json-run-request" in extensions


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ([1, 2], 400, "is not of type 'object'"),
        ({**FIELDS, "workflow_url": "https://x.invalid/a.cwl", "tags": {"n": 1}}, 400, "tags: the value of 'n'"),
        ({**FIELDS, "workflow_url": "https://x.invalid/a.cwl", "workflow_params": [1]}, 400, "workflow_params"),
        ({**FIELDS, "workflow_attachment": "x"}, 400, "workflow_attachment"),
        ({"workflow_type": "CWL"}, 400, "workflow_"),
    ],
)
def test_malformed_json_run_requests(gateway: Server, body: object, status: int, fragment: str) -> None:
    before = run_dirs(gateway)
    assert_error(gateway.post("/runs", json=body), status, fragment)
    assert run_dirs(gateway) == before


def test_json_body_not_utf8(gateway: Server) -> None:
    response = gateway.post("/runs", data=b"\xff", headers={"Content-Type": "application/json"})
    assert_error(response, 400, "not UTF-8 JSON")


def test_json_body_is_bounded(gateway: Server) -> None:
    big = json.dumps({**FIELDS, "workflow_params": {"x": "y" * (16 * 1024 * 1024)}})
    response = gateway.post("/runs", data=big, headers={"Content-Type": "application/json"})
    assert_error(response, 413, "JSON body is larger")
