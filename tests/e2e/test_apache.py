"""A real Apache httpd, with Basic auth at Apache and deploy/apache's proxy configuration, in
front of a real Gunicorn running the gateway in trusted-proxy mode."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import ROOT, Server, free_port, start_server, stop_server

D = Path(__file__).parent.parent / "data"
APACHE = Path("/usr/sbin/apache2")
MODULES = Path("/usr/lib/apache2/modules")
USERS = {"alice": "alice-pw", "bob": "bob-pw"}


class Apache:
    def __init__(self, root: Path, port: int, process_conf: Path) -> None:
        self.root, self.port, self.conf = root, port, process_conf

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        subprocess.run([str(APACHE), "-f", str(self.conf), "-k", "stop"], capture_output=True, timeout=30)
        pid_file = self.root / "httpd.pid"
        deadline = time.monotonic() + 15
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)


def start_apache(backend: str) -> Apache:
    if not APACHE.exists():
        raise FileNotFoundError("Apache httpd is not installed (scripts/system-deps installs Debian's apache2)")
    # Apache's children run as www-data: everything they read lives in a world-readable place.
    root = Path(tempfile.mkdtemp(prefix="wes-gateway-apache-"))
    os.chmod(root, 0o755)
    import bcrypt

    lines = []
    for user, password in USERS.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
        lines.append(f"{user}:$2y${hashed[4:]}")  # Apache reads bcrypt as $2y$
    (root / "htpasswd").write_text("\n".join(lines) + "\n")
    port = free_port()
    modules = [
        "mpm_event",
        "authz_core",
        "authz_user",
        "authn_core",
        "authn_file",
        "auth_basic",
        "headers",
        "proxy",
        "proxy_http",
        "macro",
        "unique_id",
    ]
    conf = root / "httpd.conf"
    run_user = "www-data" if os.geteuid() == 0 else None
    conf.write_text(
        "\n".join(
            [
                f'ServerRoot "{root}"',
                f"PidFile {root}/httpd.pid",
                f"Listen 127.0.0.1:{port}",
                "ServerName 127.0.0.1",
                *[f"LoadModule {name}_module {MODULES}/mod_{name}.so" for name in modules],
                *([f"User {run_user}", f"Group {run_user}"] if run_user else []),
                f"ErrorLog {root}/error.log",
                'LogFormat "%h %u \\"%r\\" %>s %b %{UNIQUE_ID}e" wes',
                f"CustomLog {root}/access.log wes",
                f"DefaultRuntimeDir {root}",
                f'Define WES_BACKEND "{backend}"',
                f"Define WES_HTPASSWD {root}/htpasswd",
                f"Include {ROOT}/deploy/apache/wes-gateway-proxy.conf",
                "Use WesGateway /wes",
                'Use WesGateway ""',
                "",
            ]
        )
    )
    for path in root.iterdir():
        os.chmod(path, 0o644)
    started = subprocess.run([str(APACHE), "-f", str(conf), "-k", "start"], capture_output=True, text=True, timeout=30)
    if started.returncode != 0:
        raise RuntimeError(f"apache2 did not start: {started.stderr}")
    apache = Apache(root, port, conf)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(apache.base + "/", timeout=2)
            return apache
        except requests.RequestException:
            time.sleep(0.2)
    apache.stop()
    raise RuntimeError("apache2 did not answer")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Apache, Server]]:
    # Apache reaches the gateway over a unix socket that only its group may open, and only
    # that socket is trusted to name users; the loopback TCP port (which the tests' direct
    # requests use) is not, whatever the peer address.
    sockets = Path(tempfile.mkdtemp(prefix="wes-gateway-sock-"))
    os.chmod(sockets, 0o755)
    socket_path = sockets / "wes.sock"
    group = "www-data" if os.geteuid() == 0 else ""
    server = start_server(
        tmp_path_factory.mktemp("behind-apache"),
        {
            "WES_GATEWAY_AUTH_MODES": "proxy",
            "WES_GATEWAY_TRUSTED_PROXIES": "unix",
            "WES_GATEWAY_SOCKET_GROUP": group,
            "WES_GATEWAY_MAX_ATTACHMENT_BYTES": str(300 * 1024 * 1024),
        },
        unix_socket=socket_path,
    )
    try:
        apache = start_apache(f"unix:{socket_path}|http://localhost")
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        stop_server(server)
        pytest.skip(f"no Apache httpd can be started here: {exc}")
    yield apache, server
    apache.stop()
    stop_server(server)
    shutil.rmtree(sockets, ignore_errors=True)


def wes(apache: Apache, prefix: str = "/wes") -> str:
    return f"{apache.base}{prefix}/ga4gh/wes/v1"


def wait(url: str, auth: tuple[str, str], timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = requests.get(url + "/status", auth=auth, timeout=10).json()["state"]
        if state in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
            return state
        time.sleep(0.3)
    raise AssertionError(f"{url} still running")


def test_run_through_apache_with_prefixed_urls(stack: tuple[Apache, Server]) -> None:
    apache, _ = stack
    alice = ("alice", USERS["alice"])
    assert requests.get(wes(apache) + "/runs", timeout=10).status_code == 401  # Apache asks first
    response = requests.post(
        wes(apache) + "/runs",
        auth=alice,
        timeout=60,
        data={
            "workflow_url": "wf/two_step.cwl",
            "workflow_type": "CWL",
            "workflow_type_version": "v1.2",
            "workflow_params": json.dumps({"infile": {"class": "File", "location": "in.txt"}}),
        },
        files=[
            ("workflow_attachment", ("wf/two_step.cwl", (D / "two_step.cwl").read_bytes())),
            ("workflow_attachment", ("wf/tools/upper.cwl", (D / "upper.cwl").read_bytes())),
            ("workflow_attachment", ("wf/tools/rev.cwl", (D / "rev.cwl").read_bytes())),
            ("workflow_attachment", ("in.txt", b"through apache\n")),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.headers.get("X-Request-ID")  # Apache's UNIQUE_ID, echoed by the gateway
    run_url = f"{wes(apache)}/runs/{response.json()['run_id']}"
    assert wait(run_url, alice) == "COMPLETE"
    run_log = requests.get(run_url, auth=alice, timeout=10).json()
    urls = [run_log["run_log"]["stdout"], run_log["run_log"]["stderr"], run_log["task_logs_url"]]
    tasks = requests.get(run_log["task_logs_url"], auth=alice, timeout=10).json()["task_logs"]
    urls += [task["stderr"] for task in tasks]
    for url in urls:
        assert url.startswith(wes(apache) + "/"), url
        assert requests.get(url, auth=alice, timeout=10).status_code == 200, url
    assert Path(run_log["outputs"]["result"]["path"]).read_text() == "EHCAPA HGUORHT\n"


def test_toil_wes_cwl_runner_through_apache(stack: tuple[Apache, Server], tmp_path: Path) -> None:
    apache, _ = stack
    (tmp_path / "tools").mkdir()
    shutil.copy(D / "two_step.cwl", tmp_path)
    for name in ("upper.cwl", "rev.cwl"):
        shutil.copy(D / name, tmp_path / "tools")
    (tmp_path / "words.txt").write_text("runner via apache\n")
    (tmp_path / "job.json").write_text(json.dumps({"infile": {"class": "File", "location": "words.txt"}}))
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "TOIL_WES_ENDPOINT": apache.base,
        "TOIL_WES_USER": "bob",
        "TOIL_WES_PASSWORD": USERS["bob"],
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        [str(bin_dir / "toil-wes-cwl-runner"), "two_step.cwl", "job.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(json.loads(result.stdout)["result"]["path"]).read_text() == "EHCAPA AIV RENNUR\n"


def test_forged_user_header_straight_to_gunicorn_is_rejected(stack: tuple[Apache, Server]) -> None:
    _, server = stack
    host, port = server.base.removeprefix("http://").split(":")
    # From Apache's own address too: loopback proves nothing, only the socket does.
    for source in ("127.0.0.2", "127.0.0.1"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
        conn.request("GET", "/ga4gh/wes/v1/runs", headers={"X-Remote-User": "alice"})
        response = conn.getresponse()
        assert response.status == 401 and json.loads(response.read())["status_code"] == 401


def test_client_sent_user_header_cannot_impersonate(stack: tuple[Apache, Server]) -> None:
    apache, _ = stack
    alice, bob = ("alice", USERS["alice"]), ("bob", USERS["bob"])
    response = requests.post(
        wes(apache) + "/runs",
        auth=alice,
        timeout=60,
        data={
            "workflow_url": "echo.cwl",
            "workflow_type": "CWL",
            "workflow_type_version": "v1.2",
            "workflow_params": json.dumps({"message": "alice only"}),
        },
        files=[("workflow_attachment", ("echo.cwl", (D / "echo.cwl").read_bytes()))],
    )
    run_id = response.json()["run_id"]
    forged = {"X-Remote-User": "alice"}
    assert requests.get(f"{wes(apache)}/runs/{run_id}", auth=bob, headers=forged, timeout=10).status_code == 404
    listed = requests.get(wes(apache) + "/runs", auth=bob, headers=forged, timeout=10).json()["runs"]
    assert run_id not in {run["run_id"] for run in listed}
    assert requests.get(f"{wes(apache)}/runs/{run_id}", auth=alice, timeout=10).status_code == 200
    wait(f"{wes(apache)}/runs/{run_id}", alice)


def test_100_mb_attachment_arrives_intact(stack: tuple[Apache, Server], tmp_path: Path) -> None:
    apache, server = stack
    alice = ("alice", USERS["alice"])
    big = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(big, "wb") as handle:
        for i in range(100):
            chunk = hashlib.sha256(str(i).encode()).digest() * (1024 * 1024 // 32)
            handle.write(chunk)
            digest.update(chunk)
    with open(big, "rb") as handle:
        response = requests.post(
            wes(apache) + "/runs",
            auth=alice,
            timeout=600,
            data={
                "workflow_url": "echo.cwl",
                "workflow_type": "CWL",
                "workflow_type_version": "v1.2",
                "workflow_params": json.dumps({"message": "big"}),
            },
            files=[
                ("workflow_attachment", ("echo.cwl", (D / "echo.cwl").read_bytes())),
                ("workflow_attachment", ("data/big.bin", handle)),
            ],
        )
    assert response.status_code == 200, response.text
    stored = server.data_dir / "runs" / response.json()["run_id"] / "attachments" / "data" / "big.bin"
    assert stored.stat().st_size == 100 * 1024 * 1024
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest.hexdigest()


def test_run_browser_through_apache_under_its_prefix(stack: tuple[Apache, Server]) -> None:
    apache, _ = stack
    alice = ("alice", USERS["alice"])
    base = wes(apache).removesuffix("/ga4gh/wes/v1")
    assert requests.get(base + "/ui/", timeout=10).status_code == 401  # Apache asks first
    page = requests.get(base + "/ui/", auth=alice, timeout=10)
    assert page.status_code == 200 and "Signed in as <strong>alice</strong>" in page.text
    prefix = base.split("://", 1)[1].split("/", 1)[1] if "/" in base.split("://", 1)[1] else ""
    # Every link and asset is under the prefix, so that the pages work behind it.
    assert f'href="/{prefix}/ui/static/ui.css"'.replace("//", "/") in page.text
    assert f'data-api="/{prefix}/ga4gh/wes/v1"'.replace("//", "/") in page.text
    assert requests.get(base + "/ui/static/ui.css", auth=alice, timeout=10).status_code == 200
