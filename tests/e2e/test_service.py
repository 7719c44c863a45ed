"""Service-info, paging over HTTP, and the WSGI entry point, on servers with a seeded store."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import DATA, Server, record_run, start_server, stop_server

from wes_gateway import store
from wes_gateway.config import load_settings
from wes_gateway.web import service_info


def seed(data_dir: Path, count: int) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    db = store.open_database(f"sqlite:///{data_dir / 'wes.sqlite3'}")
    store.upgrade(db)
    ids = []
    with db.atomic():
        for i in range(count):
            ids.append(record_run(tags={"i": str(i)}))
    db.close()
    return ids


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[str]]]:
    data_dir = tmp_path_factory.mktemp("seeded")
    ids = seed(data_dir, 23)
    # No supervisor: the seeded runs stay QUEUED and nothing executes.
    server = start_server(
        data_dir,
        {"WES_GATEWAY_SUPERVISOR": "off", "WES_GATEWAY_DEFAULT_PAGE_SIZE": "10", "WES_GATEWAY_MAX_PAGE_SIZE": "20"},
    )
    yield server, ids
    stop_server(server)


def test_filesystem_protocols_follow_the_settings(tmp_path: Path) -> None:
    def protocols(**overrides: object) -> list[str]:
        return service_info.filesystem_protocols(load_settings({}, data_dir=tmp_path, **overrides))

    assert protocols() == ["http", "https", "drs"]
    # Local files only where the deployment opened directories to runs.
    assert protocols(allowed_file_roots=[tmp_path]) == ["http", "https", "file", "drs"]
    # DRS through a named server only, whose access URLs must still pass a prefix.
    assert protocols(allowed_url_prefixes=["http://127.0.0.1:8/"]) == ["http", "https"]
    assert protocols(allowed_url_prefixes=["http://127.0.0.1:8/"], drs_resolvers={"d": "http://127.0.0.1:8/x"}) == [
        "http",
        "https",
        "drs",
    ]
    # No prefix at all: no access URL could be fetched.
    assert protocols(allowed_url_prefixes=[], drs_resolvers={"d": "http://127.0.0.1:8/x"}) == ["http", "https"]


def test_service_info_is_truthful(seeded: tuple[Server, list[str]]) -> None:
    server, ids = seeded
    info = server.get("/service-info").json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "wes", "version": "1.1.0"}
    assert info["supported_wes_versions"] == ["1.1.0"]
    assert info["workflow_type_versions"]["CWL"]["workflow_type_version"] == ["v1.0", "v1.1", "v1.2"]
    assert info["workflow_engine_versions"] == {"toil": {"workflow_engine_version": [version("toil")]}}
    assert info["system_state_counts"]["QUEUED"] == len(ids)
    assert info["system_state_counts"]["COMPLETE"] == 0
    names = {p["name"] for p in info["default_workflow_engine_parameters"]}
    assert {"--maxCores", "--retryCount", "--outdir"} <= names
    # The default deployment: http(s) inputs, DRS through public https servers, no local files.
    assert info["supported_filesystem_protocols"] == ["http", "https", "drs"]
    for key in ("id", "name", "organization", "version", "auth_instructions_url", "tags"):
        assert key in info


def test_paging_default_max_and_tokens(seeded: tuple[Server, list[str]]) -> None:
    server, ids = seeded
    first = server.get("/runs").json()
    assert len(first["runs"]) == 10 and first["next_page_token"]
    assert len(server.get("/runs?page_size=500").json()["runs"]) == 20
    seen = []
    token = ""
    while True:
        page = server.get("/runs", params={"page_size": 7, **({"page_token": token} if token else {})}).json()
        seen += [run["run_id"] for run in page["runs"]]
        for run in page["runs"]:
            assert run["state"] == "QUEUED" and set(run["tags"]) == {"i"}
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(reversed(ids))


def test_cancel_queued_run_is_immediate(seeded: tuple[Server, list[str]]) -> None:
    server, ids = seeded
    response = server.post(f"/runs/{ids[0]}/cancel")
    assert response.status_code == 200 and response.json() == {"run_id": ids[0]}
    assert server.get(f"/runs/{ids[0]}/status").json() == {"run_id": ids[0], "state": "CANCELED"}
    run_log = server.get(f"/runs/{ids[0]}").json()
    assert run_log["state"] == "CANCELED" and run_log["run_log"]["end_time"]


def test_swagger_ui_and_spec_are_served(seeded: tuple[Server, list[str]]) -> None:
    server, _ = seeded
    assert server.get("/ui/").status_code == 200
    spec = server.get("/openapi.json").json()
    assert spec["info"]["version"] == "1.1.0"


def test_wsgi_entry_point_keeps_validation(tmp_path: Path) -> None:
    seed(tmp_path, 1)
    server = start_server(
        tmp_path,
        {"WES_GATEWAY_SUPERVISOR": "off"},
        workers=1,
        app="wes_gateway.web.wsgi:application",
        worker_class="gthread",
    )
    try:
        assert server.get("/service-info").status_code == 200
        bad = server.get("/runs?page_size=notanumber")
        assert bad.status_code == 400 and bad.json()["status_code"] == 400
        assert server.get("/runs/missing").json() == {"msg": "run missing not found", "status_code": 404}
        assert "Using worker: gthread" in server.log_tail(200)
    finally:
        stop_server(server)


def test_active_run_limit_holds_under_simultaneous_submissions(tmp_path: Path) -> None:
    # The limit is checked in the transaction that creates the run: 2 x limit submissions at
    # once, over four workers, create exactly `limit` runs.
    from concurrent.futures import ThreadPoolExecutor

    limit = 3
    server = start_server(
        tmp_path / "limit",
        {"WES_GATEWAY_SUPERVISOR": "off", "WES_GATEWAY_MAX_ACTIVE_RUNS_PER_USER": str(limit)},
        workers=4,
    )
    echo = (Path(__file__).parent.parent / "data" / "echo.cwl").read_bytes()
    try:

        def submit(i: int) -> int:
            return server.submit(
                {"echo.cwl": echo},
                workflow_url="echo.cwl",
                workflow_type="CWL",
                workflow_type_version="v1.2",
                workflow_params={"message": str(i)},
            ).status_code

        with ThreadPoolExecutor(2 * limit) as pool:
            codes = sorted(pool.map(submit, range(2 * limit)))
        assert codes == [200] * limit + [429] * limit
        assert len(server.get("/runs?page_size=100").json()["runs"]) == limit
        runs = server.data_dir / "runs"
        assert len([p for p in runs.iterdir() if not p.name.startswith(".")]) == limit
        assert not any((runs / ".staging").iterdir())
    finally:
        stop_server(server)


def test_every_response_says_nosniff(server: Server) -> None:
    # A run writes its own logs and outputs: no browser may sniff them into HTML or script.
    run_id = server.submit_cwl(DATA / "echo.cwl", {"message": "<script>alert(1)</script>"})
    assert server.wait(run_id) == "COMPLETE"
    responses = [
        server.get(f"/runs/{run_id}/logs/stderr"),
        server.get(f"/runs/{run_id}/outputs/out.txt"),
        server.get("/service-info"),
        server.get("/runs/nonesuch"),
        server.get("/no/such/route"),
    ]
    assert [r.headers.get("X-Content-Type-Options") for r in responses] == ["nosniff"] * len(responses), [
        (r.url, r.status_code) for r in responses
    ]


def test_log_routes_name_their_charset_once(server: Server) -> None:
    run_id = server.submit_cwl(DATA / "echo.cwl", {"message": "charset"})
    assert server.wait(run_id) == "COMPLETE"
    [task] = server.get(f"/runs/{run_id}/tasks").json()["task_logs"]
    urls = [
        f"{server.api}/runs/{run_id}/logs/stdout",
        f"{server.api}/runs/{run_id}/logs/stderr",
        task["stdout"],
        task["stderr"],
    ]
    for url in urls:
        for method in (requests.get, requests.head):
            response = method(url, timeout=10)
            assert response.status_code == 200, (url, response.status_code)
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8", (url, method.__name__)


def test_urls_never_lead_to_a_host_a_header_named(seeded: tuple[Server, list[str]], tmp_path: Path) -> None:
    server, ids = seeded
    run_id = ids[0]
    for headers in (
        {"X-Forwarded-Prefix": "//evil.example"},
        {"X-Forwarded-Host": "evil.example/x?", "X-Forwarded-Proto": "javascript"},
        {"Host": "evil.example@x"},
    ):
        log = server.get(f"/runs/{run_id}", headers=headers).json()
        url = urlsplit(log["task_logs_url"])
        assert url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost") and "evil" not in url.geturl(), (
            headers,
            url.geturl(),
        )
    # A well-formed prefix from the trusted proxy (loopback here) is honoured.
    log = server.get(f"/runs/{run_id}", headers={"X-Forwarded-Prefix": "/wes"}).json()
    assert log["task_logs_url"].startswith(server.base + "/wes/ga4gh/wes/v1/")
    # With public_url set, the headers count for nothing.
    public = start_server(tmp_path / "data", {"WES_GATEWAY_PUBLIC_URL": "https://wes.example.org/site"})
    try:
        page = public.get("/runs", headers={"X-Forwarded-Host": "evil.example"})
        assert page.status_code == 200
        login = requests.post(f"{public.base}/ui/logout", allow_redirects=False, timeout=10)
        assert login.headers["Location"].startswith("/site/ui/") or login.headers["Location"].startswith(
            "https://wes.example.org/site/"
        ), login.headers.get("Location")
    finally:
        stop_server(public)


def test_a_client_slow_with_its_headers_is_cut_off(tmp_path: Path) -> None:
    """Slowloris: connections that send nothing, or a header byte at a time, are closed once
    header_timeout (2 s here) has passed, with a 408; before, they were held for ever."""
    import socket
    import time

    server = start_server(tmp_path, {"WES_GATEWAY_HEADER_TIMEOUT": "2", "WES_GATEWAY_SUPERVISOR": "off"}, workers=1)
    port = int(server.base.rsplit(":", 1)[1])
    try:
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        trickling = socket.create_connection(("127.0.0.1", port), timeout=10)
        started = time.monotonic()
        trickling.sendall(b"GET /ga4gh/wes/v1/service-info HTTP/1.1\r\n")
        closed_after = None
        for header in (
            b"Host: 127.0.0.1\r\n",
            b"X-A: 1\r\n",
            b"X-B: 2\r\n",
            b"X-C: 3\r\n",
            b"X-D: 4\r\n",
            b"X-E: 5\r\n",
        ):
            time.sleep(0.8)
            try:
                trickling.sendall(header)
            except OSError:
                closed_after = time.monotonic() - started
                break
        answer = trickling.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b'"status_code": 408' in answer
        assert silent.recv(4096).startswith(b"HTTP/1.1 408")  # the silent one too
        assert closed_after is None or closed_after < 5
        assert server.get("/service-info").status_code == 200  # a prompt client is served
        silent.close()
        trickling.close()
    finally:
        stop_server(server)
