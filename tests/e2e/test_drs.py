"""Inputs by GA4GH DRS URI (#34): drs://HOST/ID and drs://NAME:ID in workflow_params are
resolved at submission against a loopback DRS server (tests/drs_server.py), fetched into the
run's attachments and verified, and run by real Toil; a wrong checksum, a host not allowed, a
missing object and a bundle are 400s naming the cause, a server that is down a 503; the bearer
token reaches only the DRS server's API, and no file of the service or its runs."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import Server, running_server
from drs_server import BYTES, TOKEN, DrsServer, drs_server, sha256
from test_bad_input import assert_error, run_dirs

from wes_gateway.config import load_settings
from wes_gateway.errors import BadRequest
from wes_gateway.intake import drs

CAT_CWL = b"""cwlVersion: v1.2
class: CommandLineTool
baseCommand: cat
inputs:
  one: {type: File, inputBinding: {position: 1}}
  more: {type: "File[]", inputBinding: {position: 2}}
outputs:
  out: {type: stdout}
stdout: out.txt
"""


@pytest.fixture(scope="module")
def registry() -> Iterator[DrsServer]:
    with drs_server() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str], registry: DrsServer
) -> Iterator[Server]:
    # Outside the data directory, as a deployment would keep it.
    credentials = tmp_path_factory.mktemp("drs-credentials") / "drs.json"
    credentials.write_text(json.dumps({"loopback": {"bearer": TOKEN}, registry.netloc: {"bearer": TOKEN}}))
    env = {
        **engine_env,
        "WES_GATEWAY_DRS_RESOLVERS": f"{registry.netloc}={registry.root},loopback={registry.root},"
        "down=http://127.0.0.1:9/ga4gh/drs/v1",
        "WES_GATEWAY_DRS_CREDENTIALS": str(credentials),
        "WES_GATEWAY_DRS_TIMEOUT": "10",
        "WES_GATEWAY_ALLOWED_URL_PREFIXES": f"https://,{registry.data}",
    }
    with running_server(tmp_path_factory.mktemp("drs"), env) as server:
        yield server


def submit(server: Server, one: str, more: list[str] | None = None) -> requests.Response:
    params = {
        "one": {"class": "File", "location": one},
        "more": [{"class": "File", "path": uri} for uri in more or []],
    }
    return server.post(
        "/runs",
        files=[
            ("workflow_url", (None, "cat.cwl")),
            ("workflow_type", (None, "CWL")),
            ("workflow_type_version", (None, "v1.2")),
            ("workflow_params", (None, json.dumps(params))),
            ("workflow_attachment", ("cat.cwl", CAT_CWL)),
        ],
    )


def files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                if not path.is_symlink() and path.is_file() and needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_drs_inputs_reach_the_tool_and_the_token_stays_with_the_api(gateway: Server, registry: DrsServer) -> None:
    response = submit(
        gateway, f"drs://{registry.netloc}/obj1", ["drs://loopback:secret", f"drs://{registry.netloc}/obj1"]
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert gateway.wait(run_id, timeout=400) == "COMPLETE", gateway.get(f"/runs/{run_id}").text
    out = gateway.get(f"/runs/{run_id}").json()["outputs"]["out"]
    body = gateway.get(f"/runs/{run_id}/outputs/{out['basename']}").content
    assert body == BYTES["obj1"] + BYTES["secret"] + BYTES["obj1"]

    logs = gateway.system_logs(run_id)
    assert f"drs: drs://{registry.netloc}/obj1 -> .drs/0/obj1.txt" in logs
    assert f"sha256 {sha256(BYTES['obj1'])}, checksum sha-256:{sha256(BYTES['obj1'])} verified" in logs
    assert "drs: drs://loopback:secret -> .drs/1/secret.txt" in logs and "checksum md5:" in logs
    assert TOKEN not in json.dumps(gateway.get(f"/runs/{run_id}").json())

    # The RO-Crate names each input's DRS URI and checksum.
    crate = zipfile.ZipFile(io.BytesIO(gateway.get(f"/runs/{run_id}/ro-crate").content))
    graph = {item["@id"]: item for item in json.loads(crate.read("ro-crate-metadata.json"))["@graph"]}
    entity = graph["workflow/.drs/0/obj1.txt"]
    assert entity["sameAs"] == {"@id": f"drs://{registry.netloc}/obj1"}
    assert entity["sha256"] == sha256(BYTES["obj1"]) and entity["checksum"] == f"sha-256:{sha256(BYTES['obj1'])}"
    assert graph["workflow/.drs/1/secret.txt"]["sameAs"] == {"@id": "drs://loopback:secret"}
    assert TOKEN.encode() not in b"".join(crate.read(name) for name in crate.namelist())

    # The token went to the DRS API only, never to where the bytes are; obj1 was fetched once.
    with_token = {path for path, auth in registry.seen if auth}
    assert with_token and all(path.startswith("/ga4gh/drs/v1/objects/") for path in with_token)
    assert all(auth in ("", f"Bearer {TOKEN}") for _path, auth in registry.seen)
    assert [path for path, _ in registry.seen].count("/data/obj1") == 1
    # Nowhere in the service's files: the database, the run, its logs, gunicorn.log.
    assert files_holding(gateway.data_dir, TOKEN.encode()) == []
    assert TOKEN not in gateway.log_path.read_text()


CAT_WDL = b"""version 1.0

workflow w {
  input { File f  Array[File] g }
  call c { input: f = f, g = g }
  output { String s = c.s }
}

task c {
  input { File f  Array[File] g }
  command <<<
    cat ~{f} ~{sep=" " g}
  >>>
  output { String s = read_string(stdout()) }
  runtime { docker: "ubuntu:22.04" }
}
"""


def test_wdl_file_inputs_from_drs(gateway: Server, registry: DrsServer) -> None:
    params = {"w.f": f"drs://{registry.netloc}/obj1", "w.g": ["drs://loopback:secret"]}
    response = gateway.post(
        "/runs",
        files=[
            ("workflow_url", (None, "cat.wdl")),
            ("workflow_type", (None, "WDL")),
            ("workflow_type_version", (None, "1.0")),
            ("workflow_params", (None, json.dumps(params))),
            ("workflow_attachment", ("cat.wdl", CAT_WDL)),
        ],
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert gateway.wait(run_id, timeout=400) == "COMPLETE", gateway.get(f"/runs/{run_id}").text
    expected = (BYTES["obj1"] + BYTES["secret"]).decode().strip()
    assert gateway.get(f"/runs/{run_id}").json()["outputs"]["w.s"] == expected
    assert "drs: drs://loopback:secret -> .drs/1/secret.txt" in gateway.system_logs(run_id)


@pytest.mark.parametrize(
    "uri, status, fragments",
    [
        ("drs://{netloc}/wrongsum", 400, ("drs://127.0.0.1", "/wrongsum", "checksum mismatch", "sha-256")),
        ("drs://{netloc}/nothing", 400, ("DRS object 'nothing' is not known to http://127.0.0.1",)),
        ("drs://loopback:bundle", 400, ("drs://loopback:bundle", "is a bundle; bundles are not supported")),
        ("drs://10.1.2.3/obj1", 400, ("https://10.1.2.3/ga4gh/drs/v1/objects/obj1", "private or loopback")),
        ("drs://nobody:obj1", 400, ("drs://NAME:ID with NAME in drs_resolvers",)),
        ("drs://down/obj1", 503, ("drs://down/obj1", "127.0.0.1:9 could not be reached", "try again later")),
    ],
)
def test_refused_names_the_cause(
    gateway: Server, registry: DrsServer, uri: str, status: int, fragments: tuple[str, ...]
) -> None:
    before = run_dirs(gateway)
    response = submit(gateway, uri.format(netloc=registry.netloc))
    assert_error(response, status, *fragments)
    if status == 503:
        assert response.headers["Retry-After"] == "30"
    assert run_dirs(gateway) == before


def test_forms_parse(tmp_path: Path) -> None:
    settings = load_settings(
        {"WES_GATEWAY_DRS_RESOLVERS": "drs.example.org=https://drs.example.org/ga4gh/drs/v1/, dg=http://127.0.0.1:8/x"},
        data_dir=tmp_path,
    )
    assert drs.parse("drs://drs.example.org/a%2Fb", settings) == drs.Target(
        "drs://drs.example.org/a%2Fb", "https://drs.example.org/ga4gh/drs/v1", "a/b", "drs.example.org"
    )
    assert drs.parse("drs://DG:abc:1", settings) == drs.Target("drs://DG:abc:1", "http://127.0.0.1:8/x", "abc:1", "dg")
    with pytest.raises(BadRequest, match="not under an allowed URL prefix"):
        drs.parse("drs://drs.elsewhere.org/x", load_settings({}, data_dir=tmp_path, allowed_url_prefixes=[]))
    with pytest.raises(BadRequest, match="drs_resolvers"):
        drs.parse("drs://unknown:x", settings)


DEFAULT_CWL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: cat
inputs:
  one: {{type: File, inputBinding: {{position: 1}}, default: {{class: File, location: "{uri}"}}}}
outputs:
  out: {{type: stdout}}
stdout: out.txt
"""

DEFAULT_WDL = """version 1.0

task c {{
  input {{ File f = "{uri}" }}
  command <<<
    cat ~{{f}}
  >>>
  output {{ String s = read_string(stdout()) }}
}}
"""


@pytest.mark.parametrize("kind", ["CWL", "WDL"])
def test_drs_default_in_the_document_is_refused(gateway: Server, registry: DrsServer, kind: str) -> None:
    """The leader reads the documents as they are, so a drs:// default (which it could not
    fetch) is refused at submission, before anything is fetched from the DRS server."""
    uri = f"drs://{registry.netloc}/obj1"
    name, text, version = ("d.cwl", DEFAULT_CWL, "v1.2") if kind == "CWL" else ("d.wdl", DEFAULT_WDL, "1.0")
    before, fetched = run_dirs(gateway), len(registry.seen)
    response = gateway.post(
        "/runs",
        files=[
            ("workflow_url", (None, name)),
            ("workflow_type", (None, kind)),
            ("workflow_type_version", (None, version)),
            ("workflow_params", (None, "{}")),
            ("workflow_attachment", (name, text.format(uri=uri).encode())),
        ],
    )
    assert_error(
        response,
        400,
        uri,
        "drs:// defaults in the workflow document are not supported; pass the object in workflow_params",
    )
    assert run_dirs(gateway) == before
    assert len(registry.seen) == fetched
