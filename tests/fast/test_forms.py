"""POST /runs in process: the form parsed once (intake/form.RunForm) from a multipart body or
a JSON RunRequest, and every refusal a precise ErrorResponse that leaves nothing behind: no
run row, no run directory, no staging or spool directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wes_gateway import store
from wes_gateway.config import Settings, load_settings
from wes_gateway.intake.form import RunForm
from wes_gateway.web.app import create_app

API = "/ga4gh/wes/v1"
DATA = Path(__file__).resolve().parents[1] / "data"
ECHO = (DATA / "echo.cwl").read_bytes()
FIELDS = {"workflow_type": "CWL", "workflow_type_version": "v1.2", "workflow_url": "echo.cwl"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """tests/data is a directory this service may read (a JSON RunRequest names a local file)."""
    return load_settings(
        {},
        data_dir=tmp_path / "data",
        container_engine="none",
        run_sandbox="none",
        run_disk="none",
        allowed_file_roots=[str(DATA)],
    )


def nothing_written(settings: Settings) -> None:
    assert store.count_runs() == 0
    runs = settings.runs_dir
    assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == []
    staging = runs / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def assert_error(response: Any, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"msg", "status_code"} and body["status_code"] == status
    for fragment in fragments:
        assert fragment in body["msg"], body


def test_a_multipart_submission_is_staged_and_recorded(client: Any, settings: Settings) -> None:
    response = client.post(
        f"{API}/runs",
        data={**FIELDS, "workflow_params": '{"message": "hi"}', "tags": '{"k": "v"}'},
        files=[("workflow_attachment", ("echo.cwl", ECHO)), ("workflow_attachment", ("in/a b.txt", b"x"))],
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    run = store.get_run(run_id)
    assert run is not None and run.state == "QUEUED" and run.tags == {"k": "v"}
    assert run.request["workflow_params"] == {"message": "hi"}
    attachments = settings.runs_dir / run_id / "attachments"
    assert (attachments / "echo.cwl").read_bytes() == ECHO
    assert (attachments / "in" / "a b.txt").read_bytes() == b"x"
    # The spool the upload middleware wrote is gone once the client has its answer.
    assert list((settings.runs_dir / ".staging").iterdir()) == []


def test_run_request_fields_as_file_parts_are_their_text(client: Any, settings: Settings) -> None:
    files = [
        ("workflow_attachment", ("echo.cwl", ECHO)),
        ("workflow_params", ("params.json", b'\xef\xbb\xbf{"message": "from a file part"}', "application/json")),
        ("tags", ("tags.json", b'{"client": "dockstore-cli"}', "application/json")),
        ("workflow_engine_parameters", ("engine.json", b'{"--logLevel": "INFO"}', "application/json")),
    ]
    response = client.post(f"{API}/runs", data=FIELDS, files=files)
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    request = client.get(f"{API}/runs/{run_id}").json()["request"]
    assert request["workflow_params"] == {"message": "from a file part"}
    assert request["tags"] == {"client": "dockstore-cli"}
    assert request["workflow_engine_parameters"] == {"--logLevel": "INFO"}
    assert [p.name for p in (settings.runs_dir / run_id / "attachments").iterdir()] == ["echo.cwl"]


def test_a_json_run_request(client: Any) -> None:
    body = {
        **FIELDS,
        "workflow_url": str(DATA / "echo.cwl"),
        "workflow_params": {"message": "from JSON"},
        "tags": {"form": "json"},
        "workflow_engine_parameters": {"--maxCores": 1, "--stats": None},
    }
    response = client.post(f"{API}/runs", json=body)
    assert response.status_code == 200, response.text
    request = client.get(f"{API}/runs/{response.json()['run_id']}").json()["request"]
    assert request["workflow_params"] == {"message": "from JSON"}
    assert request["tags"] == {"form": "json"}
    assert request["workflow_engine_parameters"] == {"--maxCores": "1", "--stats": ""}


BAD_MULTIPART = [
    ({"workflow_param": "{}"}, [], 400, ("unknown form field(s): workflow_param",)),
    ({"workflow_url": ""}, [], 400, ("workflow_url is required",)),
    ({"workflow_type": "PYTHON"}, [], 400, ("workflow_type 'PYTHON' is not supported",)),
    ({"workflow_type_version": "v9"}, [], 400, ("workflow_type_version 'v9' is not supported",)),
    ({"workflow_params": "{not json"}, [], 400, ("workflow_params is not valid JSON",)),
    ({"workflow_params": "[1]"}, [], 400, ("workflow_params must be a JSON object, not list",)),
    ({"workflow_params": '{"$import": "x"}'}, [], 400, ("$import is not allowed",)),
    ({"tags": '{"n": 1}'}, [], 400, ("tags: the value of 'n' must be a string",)),
    ({"workflow_engine_parameters": '{"--setEnv": "A=1"}'}, [], 400, ("--setEnv is not allowed",)),
    ({"workflow_engine": "cromwell"}, [], 400, ("workflow_engine 'cromwell' is not supported",)),
    ({"workflow_url": "other.cwl"}, [], 400, ("'other.cwl' is neither an attachment",)),
    ({}, [("workflow_params", ("p.json", b'{"m": "\xff"}'))], 400, ("workflow_params: not UTF-8 text",)),
    ({}, [("workflow_attachment", ("../up.cwl", b"x"))], 400, ("workflow_attachment",)),
    ({}, [("workflow_attachment", ("echo.cwl", b"other"))], 400, ("sent twice with different contents",)),
]


@pytest.mark.parametrize("fields, extra_files, status, fragments", BAD_MULTIPART)
def test_bad_multipart_forms_are_refused_precisely(
    client: Any,
    settings: Settings,
    fields: dict[str, str],
    extra_files: list[Any],
    status: int,
    fragments: tuple[str, ...],
) -> None:
    files = [("workflow_attachment", ("echo.cwl", ECHO)), *extra_files]
    response = client.post(f"{API}/runs", data={**FIELDS, **fields}, files=files)
    assert_error(response, status, *fragments)
    nothing_written(settings)


BAD_JSON = [
    ([1, 2], 400, "is not of type 'object'"),
    ({**FIELDS, "workflow_type": 5}, 400, "5 is not of type 'string'"),
    ({"workflow_type": "CWL"}, 400, "is a required property"),
    ({**FIELDS, "tags": {"n": 1}}, 400, "tags: the value of 'n' must be a string"),
    ({**FIELDS, "workflow_params": [1]}, 400, "is not of type 'object' - 'workflow_params'"),
    ({**FIELDS, "workflow_attachment": "x"}, 400, "unknown form field(s): workflow_attachment"),
    ({**FIELDS, "extra": 5}, 400, "extra must be a string, not int"),
    ({**FIELDS, "workflow_url": "/etc/passwd"}, 400, "outside the directories this service may read"),
]


@pytest.mark.parametrize("body, status, fragment", BAD_JSON)
def test_bad_json_run_requests_are_refused_precisely(
    client: Any, settings: Settings, body: object, status: int, fragment: str
) -> None:
    assert_error(client.post(f"{API}/runs", json=body), status, fragment)
    nothing_written(settings)


@pytest.mark.parametrize(
    "content, content_type, fragment",
    [
        (b"\xff", "application/json", "not UTF-8 JSON"),
        (b"{", "application/json", "not UTF-8 JSON"),
        (b"workflow_url=x", "application/x-www-form-urlencoded", "takes a multipart/form-data body"),
        (b"x", "multipart/form-data", "takes a multipart/form-data body"),  # no boundary
        (b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\nunterminated', "multipart/form-data; boundary=b", ""),
    ],
)
def test_bodies_of_the_wrong_kind_are_400(
    client: Any, settings: Settings, content: bytes, content_type: str, fragment: str
) -> None:
    response = client.post(f"{API}/runs", content=content, headers={"Content-Type": content_type})
    assert_error(response, 400, fragment)
    nothing_written(settings)


def limited(tmp_path: Path, **overrides: Any) -> Any:
    settings = load_settings(
        {}, data_dir=tmp_path / "limited", container_engine="none", run_sandbox="none", run_disk="none", **overrides
    )
    return settings, create_app(settings).test_client()


def test_attachment_limits_are_413_and_leave_nothing(tmp_path: Path) -> None:
    settings, client = limited(tmp_path, max_attachment_count=1, max_attachment_file_bytes=1000)
    two = [("workflow_attachment", ("echo.cwl", ECHO)), ("workflow_attachment", ("b.txt", b"x"))]
    assert_error(client.post(f"{API}/runs", data=FIELDS, files=two), 413, "more than 1 files")
    nothing_written(settings)
    big = [("workflow_attachment", ("echo.cwl", ECHO + b"#" * 1000))]
    assert_error(client.post(f"{API}/runs", data=FIELDS, files=big), 413, "larger than 1000 bytes")
    nothing_written(settings)
    # Within the limits the same form goes through.
    ok = client.post(f"{API}/runs", data=FIELDS, files=[("workflow_attachment", ("echo.cwl", ECHO))])
    assert ok.status_code == 200, ok.text


def test_an_oversized_content_length_is_refused_before_reading(tmp_path: Path) -> None:
    settings, client = limited(tmp_path, max_attachment_bytes=10)
    response = client.post(
        f"{API}/runs",
        content=b"x" * (16 * 1024 * 1024 + 11),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 413, "larger than this service accepts")
    nothing_written(settings)


def test_the_per_user_limit_is_429_and_leaves_nothing_more(tmp_path: Path) -> None:
    settings, client = limited(tmp_path, max_active_runs_per_user=1)
    files = [("workflow_attachment", ("echo.cwl", ECHO))]
    first = client.post(f"{API}/runs", data=FIELDS, files=files)
    assert first.status_code == 200, first.text
    response = client.post(f"{API}/runs", data=FIELDS, files=files)
    assert_error(response, 429, "already have 1 queued or running runs")
    assert "retry-after" in response.headers
    assert store.count_runs() == 1
    assert [p.name for p in settings.runs_dir.iterdir() if not p.name.startswith(".")] == [first.json()["run_id"]]


def test_a_json_body_as_a_form() -> None:
    form = RunForm.of_json({"workflow_params": {"a": 1}, "tags": {}, "workflow_url": "x", "workflow_engine": None})
    assert form.problem is None and form.attachments == ()
    assert dict(form.fields) == {"workflow_params": '{"a": 1}', "tags": "{}", "workflow_url": "x"}
    assert RunForm.of_json([1]).problem == "a JSON POST /runs body must be a RunRequest object"
    assert RunForm.of_json({"workflow_url": 5}).problem == "workflow_url must be a string, not int"


def test_the_handler_takes_the_middlewares_form_not_a_second_parse(client: Any, monkeypatch: Any) -> None:
    # Flask's own form parser is never asked: the handler uses the one parse.
    import werkzeug.formparser

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the form was parsed a second time")

    monkeypatch.setattr(werkzeug.formparser.FormDataParser, "parse", refuse)
    response = client.post(
        f"{API}/runs",
        data={**FIELDS, "workflow_params": json.dumps({"message": "once"})},
        files=[("workflow_attachment", ("echo.cwl", ECHO))],
    )
    assert response.status_code == 200, response.text
    assert store.get_run(response.json()["run_id"]).request["workflow_params"] == {"message": "once"}
