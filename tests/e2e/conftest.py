"""Fixtures that start the real thing: Gunicorn on a free loopback port, the supervisor, Toil.
The gateway itself is harness/ (which the benchmarks use too); the fixtures wrap it, and the
names the tests import from here stay importable from here."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.gateway import (
    API,
    DATA,
    IMAGE_STORE,
    ROOT,
    SCRIPT_CWL,
    TERMINAL,
    Server,
    container_env,
    free_port,
    images_unavailable,
    kill_all_leaders,
    peak_rss,
    running_server,
    start_server,
    stop_server,
    unmount_runs,
    wait_until,
    worker_pid,
)
from harness.loopback import serve_bytes as loopback_http
from harness.records import record_run

__all__ = [
    "API",
    "DATA",
    "IMAGE_STORE",
    "ROOT",
    "SCRIPT_CWL",
    "TERMINAL",
    "Server",
    "cmdline",
    "container_env",
    "free_port",
    "images_unavailable",
    "kill_all_leaders",
    "lasting_processes",
    "leader_group",
    "leftover_processes",
    "loopback_http",
    "peak_rss",
    "pid_gone",
    "record_run",
    "run_groups",
    "running_server",
    "start_server",
    "stop_server",
    "unix_request",
    "unmount_runs",
    "wait_for_tool",
    "wait_until",
    "worker_pid",
]


def unix_request(socket_path: Path, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """GET over a unix socket, as Apache's mod_proxy does for a unix: backend."""
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(str(socket_path))

    conn = UnixConnection("localhost", timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def leftover_processes(run_id: str, groups: set[int] | None = None) -> list[int]:
    from wes_gateway.host.procs import processes_of_run

    return processes_of_run(run_id, groups)


def lasting_processes(run_id: str, groups: set[int] | None = None, grace: float = 5.0) -> list[int]:
    """The run's processes still there after ``grace`` seconds: one killed a moment ago (with
    the sandbox's PID namespace, say) takes a little while to exit, its command line already empty."""
    deadline = time.monotonic() + grace
    while (left := leftover_processes(run_id, groups)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def run_groups(run_id: str, groups: set[int] | None = None) -> set[int]:
    from wes_gateway.host.procs import run_process_groups

    return run_process_groups(run_id, groups)


def leader_group(data_dir: Path, run_id: str) -> set[int]:
    """The group of the run's leader once it has started: forked from the forkserver, it and
    what it forks (the worker zygote) carry no marker. Its launcher called setsid."""
    from wes_gateway.files.paths import RunPaths

    try:
        return {int(json.loads(RunPaths(root=data_dir / "runs" / run_id).leader_file.read_text())["pid"])}
    except (OSError, ValueError, KeyError):
        return set()


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_for_tool(run_id: str, token: bytes, data_dir: Path, timeout: float = 120) -> tuple[int, set[int]]:
    """The pid of the run's process whose command line holds ``token``, and the run's groups."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = run_groups(run_id, leader_group(data_dir, run_id))
        for pid in leftover_processes(run_id, groups):
            if token in cmdline(pid):
                return pid, groups
        time.sleep(0.3)
    raise AssertionError(f"run {run_id}: no process with {token!r} after {timeout}s")


def pid_gone(pid: int) -> bool:
    from wes_gateway.host.procs import pid_alive

    return not pid_alive(pid)


@pytest.fixture(scope="session")
def image_store() -> Path:
    """The read-only image store of the tests' stand-in images (debian:stable-slim, python:3-slim,
    bash:4.4, alpine:latest, ubuntu:20.04), or the session's tests that need it skip."""
    why = images_unavailable()
    if why:
        pytest.skip(why)
    return IMAGE_STORE


@pytest.fixture(scope="session")
def engine_env() -> dict[str, str]:
    """The container settings of the tests' gateways (container_env)."""
    return container_env(None if images_unavailable() else IMAGE_STORE)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("wes"), engine_env) as running:
        yield running


@pytest.fixture(scope="session", autouse=True)
def _run_volumes_unmounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The run filesystems (wes_gateway.host.volumes) that the session's gateways mounted stay
    mounted after their servers stop, as they would in service: unmounted at the end."""
    yield
    unmount_runs(tmp_path_factory.getbasetemp())


@pytest.fixture
def data() -> Path:
    return DATA


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    """A private PostgreSQL server for the module's tests (tests/e2e/postgres.py)."""
    from postgres import start_postgres

    try:
        pg = start_postgres()
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")
    yield pg
    pg.stop()


@pytest.fixture
def shared() -> Iterator[Path]:
    """A shared directory as a cluster's: outside pytest's private temporary tree, so that
    batch jobs running as the run user can reach it."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="wes-gateway-shared-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
