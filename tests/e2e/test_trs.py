"""Workflows by GA4GH TRS id (#34): Dockstore ids, trs:// URIs and TRS descriptor URLs are
fetched whole at submission from a loopback TRS server (tests/trs_server.py), pinned, and run
by real Toil; an unknown id or version is a 400, a root not allowed a 400 naming trs_roots, a
hanging server a 503 in bounded time while /health goes on answering."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from conftest import Server, running_server
from test_bad_input import assert_error, run_dirs
from trs_server import CWL_ID, GREET_WDL, HANGING_ID, MAIN_CWL, SAY_CWL, WDL_ID, TrsServer, trs_server

from wes_gateway.config import load_settings
from wes_gateway.errors import BadRequest
from wes_gateway.intake import trs

TIMEOUT = 3


@pytest.fixture(scope="module")
def registry() -> Iterator[TrsServer]:
    with trs_server() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str], registry: TrsServer
) -> Iterator[Server]:
    env = {**engine_env, "WES_GATEWAY_TRS_ROOTS": registry.root, "WES_GATEWAY_TRS_TIMEOUT": str(TIMEOUT)}
    with running_server(tmp_path_factory.mktemp("trs"), env) as server:
        yield server


def form(server: Server, **fields: object) -> requests.Response:
    """A multipart form with no attachments (plain fields only)."""
    parts = [(k, (None, json.dumps(v) if isinstance(v, dict) else str(v))) for k, v in fields.items()]
    return server.post("/runs", files=parts)


def cwl(server: Server, url: str, message: str = "hi") -> requests.Response:
    return form(
        server,
        workflow_url=url,
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"message": message},
    )


def wdl(server: Server, url: str, name: str) -> requests.Response:
    return form(
        server, workflow_url=url, workflow_type="WDL", workflow_type_version="1.0", workflow_params={"main.name": name}
    )


def run_id_of(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["run_id"])


def trs_uri(registry: TrsServer, tool_id: str, version: str) -> str:
    return f"trs://{registry.netloc}/{quote(tool_id, safe='')}/{version}"


def cwl_output(server: Server, run_id: str) -> str:
    out = server.get(f"/runs/{run_id}").json()["outputs"]["out"]
    return str(server.get(f"/runs/{run_id}/outputs/{out['basename']}").text)


def test_cwl_by_trs_id_uri_and_url_complete(gateway: Server, registry: TrsServer) -> None:
    descriptor_url = f"{registry.root}/tools/{quote(CWL_ID, safe='')}/versions/v1/PLAIN_CWL/descriptor"
    runs = {
        "id": run_id_of(cwl(gateway, f"{CWL_ID}:v1", "by id")),
        "uri": run_id_of(cwl(gateway, trs_uri(registry, CWL_ID, "v2"), "by uri")),
        "url": run_id_of(cwl(gateway, descriptor_url, "by url")),
    }
    for what, run_id in runs.items():
        assert gateway.wait(run_id, timeout=400) == "COMPLETE", (what, gateway.get(f"/runs/{run_id}").text)
    assert cwl_output(gateway, runs["id"]) == "v1 by id\n"
    assert cwl_output(gateway, runs["uri"]) == "v2 by uri\n"
    assert cwl_output(gateway, runs["url"]) == "v1 by url\n"

    # Pinned: id, version, descriptor URL and every file's sha-256, in system_logs ...
    logs = gateway.system_logs(runs["id"])
    assert f"trs: id {CWL_ID} version v1 from {registry.root}" in logs
    assert f"trs: descriptor {descriptor_url}" in logs
    assert f"trs: sha256 {hashlib.sha256(MAIN_CWL).hexdigest()} main.cwl" in logs
    assert f"trs: sha256 {hashlib.sha256((SAY_CWL % 'v1').encode()).hexdigest()} tools/say.cwl" in logs
    # ... where another version's changed file shows ...
    v2_logs = gateway.system_logs(runs["uri"])
    assert f"trs: sha256 {hashlib.sha256((SAY_CWL % 'v2').encode()).hexdigest()} tools/say.cwl" in v2_logs
    # ... kept with the run as attachments are ...
    attached = gateway.data_dir / "runs" / runs["id"] / "attachments"
    assert (attached / "tools" / "say.cwl").read_bytes() == (SAY_CWL % "v1").encode()
    # ... and in the RO-Crate's workflow entity.
    crate = zipfile.ZipFile(io.BytesIO(gateway.get(f"/runs/{runs['id']}/ro-crate").content))
    graph = {item["@id"]: item for item in json.loads(crate.read("ro-crate-metadata.json"))["@graph"]}
    workflow = graph[graph["./"]["mainEntity"]["@id"]]
    assert workflow["url"] == descriptor_url and workflow["version"] == "v1"
    assert workflow["sameAs"] == {"@id": trs_uri(registry, CWL_ID, "v1")}
    assert workflow["identifier"] == CWL_ID
    assert workflow["sha256"] == hashlib.sha256(MAIN_CWL).hexdigest()
    assert crate.read("workflow/tools/say.cwl") == (SAY_CWL % "v1").encode()


def test_wdl_by_trs_id_and_uri_complete(gateway: Server, registry: TrsServer) -> None:
    runs = {
        "ann": run_id_of(wdl(gateway, f"{WDL_ID}:1.0", "ann")),
        "bob": run_id_of(wdl(gateway, trs_uri(registry, WDL_ID, "1.0"), "bob")),
    }
    # Fetched one by one (this server offers no zip for it), the import included, and pinned.
    for run_id in runs.values():
        assert (gateway.data_dir / "runs" / run_id / "attachments" / "lib" / "greet.wdl").read_bytes() == GREET_WDL
        assert f"trs: sha256 {hashlib.sha256(GREET_WDL).hexdigest()} lib/greet.wdl" in gateway.system_logs(run_id)
    for name, run_id in runs.items():
        assert gateway.wait(run_id, timeout=400) == "COMPLETE", (name, gateway.get(f"/runs/{run_id}").text)
        assert gateway.get(f"/runs/{run_id}").json()["outputs"]["main.greeting"] == f"hello {name}"


@pytest.mark.parametrize(
    "url, fragments",
    [
        ("#workflow/example.org/nothing:v1", ("TRS id '#workflow/example.org/nothing' is not known",)),
        (f"{CWL_ID}:v9", ("has no version 'v9'", "v1, v2")),
        (CWL_ID, ("name a version", "v1, v2")),
        ("trs://trs.example.org/x/v1", ("no TRS root is at 'trs.example.org'", "trs_roots allows")),
        (
            "http://127.0.0.1:9/ga4gh/trs/v2/tools/x/versions/v1/CWL/descriptor",
            ("under no allowed TRS root", "trs_roots"),
        ),
    ],
)
def test_refused_names_the_cause(gateway: Server, url: str, fragments: tuple[str, ...]) -> None:
    before = run_dirs(gateway)
    assert_error(cwl(gateway, url), 400, *fragments)
    assert run_dirs(gateway) == before


def test_wrong_type_for_the_version(gateway: Server) -> None:
    assert_error(wdl(gateway, f"{CWL_ID}:v1", "x"), 400, "no WDL descriptor")


def test_hanging_server_is_a_bounded_503_and_health_goes_on(gateway: Server) -> None:
    before = run_dirs(gateway)
    result: dict[str, object] = {}

    def submit() -> None:
        started = time.monotonic()
        result["response"] = cwl(gateway, f"{HANGING_ID}:v1")
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=submit)
    thread.start()
    time.sleep(0.5)
    slowest = 0.0
    while thread.is_alive() and slowest < 5:
        started = time.monotonic()
        assert requests.get(gateway.api + "/health", timeout=5).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.2)
    thread.join(TIMEOUT + 30)
    assert slowest < 1.0, slowest
    response = result["response"]
    assert isinstance(response, requests.Response)
    assert_error(response, 503, "did not answer within 3 s (trs_timeout)", "127.0.0.1")
    assert response.headers["Retry-After"] == "30"
    assert float(str(result["seconds"])) < TIMEOUT + 6
    assert run_dirs(gateway) == before


def test_service_info_lists_roots_and_forms(gateway: Server, registry: TrsServer) -> None:
    tags = gateway.get("/service-info").json()["tags"]
    assert tags["trs_roots"] == registry.root
    assert "trs://HOST/ID/VERSION" in tags["trs_workflow_url_forms"]
    assert "trs-workflow-url" in tags["extensions"].split(",")


def test_forms_parse(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=tmp_path, trs_roots=["https://dockstore.org/api/ga4gh/trs/v2/", "http://127.0.0.1:8/x"]
    )
    dockstore = "https://dockstore.org/api/ga4gh/trs/v2"
    assert trs.parse("#workflow/github.com/org/repo:v1.2", settings) == trs.Reference(
        dockstore, "#workflow/github.com/org/repo", "v1.2"
    )
    assert trs.parse("#tool/quay.io/org/tool:1", settings) == trs.Reference(dockstore, "#tool/quay.io/org/tool", "1")
    assert trs.parse("https://dockstore.org/workflows/github.com/org/repo:main?tab=info", settings) == trs.Reference(
        dockstore, "#workflow/github.com/org/repo", "main"
    )
    assert trs.parse("trs://127.0.0.1:8/%23workflow%2Fa%2Fb/v%201", settings) == trs.Reference(
        "http://127.0.0.1:8/x", "#workflow/a/b", "v 1"
    )
    assert trs.parse(
        f"{dockstore}/tools/%23workflow%2Fa%2Fb/versions/v1/PLAIN_CWL/descriptor", settings
    ) == trs.Reference(dockstore, "#workflow/a/b", "v1")
    for plain in ("echo.cwl", "https://example.org/wf.cwl", "file:///x.cwl", "https://dockstore.org/search"):
        assert trs.parse(plain, settings) is None
    with pytest.raises(BadRequest, match="trs_roots"):
        trs.parse("trs://elsewhere.org/a/b", settings)
    with pytest.raises(BadRequest, match="trs_roots"):
        trs.parse("#workflow/a/b:1", load_settings({}, data_dir=tmp_path, trs_roots=[]))


@pytest.fixture(scope="module")
def curated(
    tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str], registry: TrsServer
) -> Iterator[Server]:
    env = {
        **engine_env,
        "WES_GATEWAY_TRS_ROOTS": registry.root,
        "WES_GATEWAY_ALLOWED_WORKFLOWS": f"{CWL_ID}:v1, https://git.example.org/pipelines/",
    }
    with running_server(tmp_path_factory.mktemp("trs-curated"), env) as server:
        yield server


def test_allowed_workflows_runs_only_what_it_lists(curated: Server, registry: TrsServer) -> None:
    listed = f"{CWL_ID}:v1,https://git.example.org/pipelines/"
    assert curated.get("/service-info").json()["tags"]["allowed_workflows"] == listed
    run_id = run_id_of(cwl(curated, trs_uri(registry, CWL_ID, "v1"), "curated"))
    before = run_dirs(curated)
    refused = {
        f"{CWL_ID}:v2": "",  # another version of an allowed id
        CWL_ID: "; name one of its allowed versions",
        f"{WDL_ID}:1.0": "",  # another id
        "https://example.org/workflows/echo.cwl": "",  # a URL outside the prefixes
        "https://git.example.org/other/echo.cwl": "",
    }
    for url, more in refused.items():
        assert_error(cwl(curated, url), 403, f"workflow_url {url!r} is not among", f"(allowed_workflows: {CWL_ID}:v1, ")
        if more:
            assert_error(cwl(curated, url), 403, more)
    # An attached workflow is not among them either.
    attached = curated.post(
        "/runs",
        files=[
            ("workflow_url", (None, "say.cwl")),
            ("workflow_type", (None, "CWL")),
            ("workflow_type_version", (None, "v1.2")),
            ("workflow_params", (None, json.dumps({"message": "x"}))),
            ("workflow_attachment", ("say.cwl", (SAY_CWL % "x").encode())),
        ],
    )
    assert_error(attached, 403, "allowed_workflows")
    # Under an allowed prefix, the workflow_url is held to the other settings as before.
    assert cwl(curated, "https://git.example.org/pipelines/echo.cwl").status_code != 403
    assert run_dirs(curated) == before
    assert curated.wait(run_id, timeout=400) == "COMPLETE", curated.get(f"/runs/{run_id}").text
    assert cwl_output(curated, run_id) == "v1 curated\n"
