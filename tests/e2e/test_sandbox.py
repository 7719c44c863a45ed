"""The run sandbox: a hostile workflow step cannot touch the gateway, other runs or other users.

The probe tool (tests/data/probe) attempts every read and write that worked before the
sandbox existed. With the sandbox on, each attempt fails and the run still completes with its
own outputs; with ``run_sandbox=none`` (and no uid to drop to), the same probe succeeds,
which shows that the probe can tell the two apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
from conftest import ROOT, Server, start_server, stop_server

D = Path(__file__).parent.parent / "data"
SECRET = "sandbox-secret-5b2e"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ALICE = basic("alice", "alice-pw")
BOB = basic("bob", "bob-pw")


def start(tmp: Path, **env: str) -> Server:
    shared = tmp / "shared"
    shared.mkdir()
    (shared / "unnamed-secret.txt").write_text("not named by any input\n")
    # The service's own files sit in a directory that is on the leaders' PATH (so the
    # sandbox binds it): they must still be hidden there.
    tools = tmp / "tools"
    tools.mkdir()
    (tools / "htpasswd").write_text(
        "".join(
            f"{user}:{bcrypt.hashpw(f'{user}-pw'.encode(), bcrypt.gensalt()).decode()}\n" for user in ("alice", "bob")
        )
    )
    (tools / "wes.toml").write_text('organization_name = "Probe Target"\n')
    return start_server(
        tmp / "data",
        unix_socket=tmp / "wes.sock",
        extra_env={
            "WES_GATEWAY_CONFIG": str(tools / "wes.toml"),
            "WES_GATEWAY_AUTH_MODES": "basic,token,proxy",
            "WES_GATEWAY_HTPASSWD_FILE": str(tools / "htpasswd"),
            "WES_GATEWAY_EXTRA_PATH": f"{tools},{ROOT / 'tests' / 'bin'}",
            "WES_GATEWAY_ALLOWED_FILE_ROOTS": str(shared),
            "SECRET_API_KEY": SECRET,
            **env,
        },
    )


def wait(server: Server, run_id: str, headers: dict[str, str], timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = requests.get(f"{server.api}/runs/{run_id}/status", headers=headers, timeout=10).json()["state"]
        if state in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
            return str(state)
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {state} after {timeout}s")


def submit(server: Server, headers: dict[str, str], files: dict[str, bytes], workflow: str, params: Any) -> str:
    response = requests.post(
        f"{server.api}/runs",
        headers=headers,
        timeout=60,
        data={
            "workflow_url": workflow,
            "workflow_type": "CWL",
            "workflow_type_version": "v1.2",
            "workflow_params": json.dumps(params),
        },
        files=[("workflow_attachment", (name, body)) for name, body in files.items()],
    )
    assert response.status_code == 200, response.text
    return str(response.json()["run_id"])


def service_pids(server: Server) -> dict[str, int]:
    """The Gunicorn master, its workers and the supervisor."""
    found = {"master": server.process.pid}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text().rsplit(") ", 1)[1].split()
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == server.process.pid:
            found["supervisor" if b"supervise" in command else f"worker-{entry.name}"] = int(entry.name)
    return found


def run_probe(server: Server, attempts: list[list[str]]) -> tuple[str, str, dict[str, Any]]:
    """Alice runs the probe tool over ``attempts``; its run id, final state and RunLog."""
    files = {
        "probe.cwl": (D / "probe" / "probe.cwl").read_bytes(),
        "probe.py": (D / "probe" / "probe.py").read_bytes(),
        "attempts.json": json.dumps(attempts).encode(),
    }
    params = {
        "script": {"class": "File", "location": "probe.py"},
        "attempts": {"class": "File", "location": "attempts.json"},
    }
    run_id = submit(server, ALICE, files, "probe.cwl", params)
    state = wait(server, run_id, ALICE)
    return run_id, state, requests.get(f"{server.api}/runs/{run_id}", headers=ALICE, timeout=10).json()


def probe(server: Server) -> tuple[str, dict[str, str], str, Path]:
    """Bob runs something; Alice's probe then goes after it and after the service."""
    bob_run = submit(server, BOB, {"echo.cwl": (D / "echo.cwl").read_bytes()}, "echo.cwl", {"message": "bob's"})
    assert wait(server, bob_run, BOB) == "COMPLETE"
    data = server.data_dir
    bob_dir = data / "runs" / bob_run
    tools = data.parent / "tools"
    token = "wes_" + secrets.token_urlsafe(32)
    attempts = [
        ["database", "read", str(data / "wes.sqlite3"), ""],
        ["other_attachment", "read", str(bob_dir / "attachments" / "echo.cwl"), ""],
        ["other_params", "read", str(bob_dir / "params.json"), ""],
        ["htpasswd", "read", str(tools / "htpasswd"), ""],
        ["config", "read", str(tools / "wes.toml"), ""],
        ["guess_runs", "list", str(data / "runs"), ""],
        ["guess_other_run", "list", str(bob_dir), ""],
        ["write_other_run", "write", str(bob_dir / "outputs" / "planted.txt"), ""],
        ["mint_admin_token", "sql", str(data / "wes.sqlite3"), hashlib.sha256(token.encode()).hexdigest()],
        ["see_processes", "processes", "/proc", "gunicorn|wes_gateway.cli"],
        # In proxy mode, a step that claims to be the proxy: over loopback TCP, and over the
        # unix socket that only the web server may open.
        ["forge_identity_tcp", "http", f"{server.api}/runs", json.dumps({"X-Remote-User": "admin"})],
        ["forge_identity_unix", "unix_http", str(data.parent / "wes.sock"), json.dumps({"X-Remote-User": "admin"})],
    ]
    attempts += [
        [f"environ_{name}", "environ", f"/proc/{pid}/environ", SECRET] for name, pid in service_pids(server).items()
    ]
    run_id, state, run_log = run_probe(server, attempts)
    assert state == "COMPLETE", (state, server.log_tail())
    report = json.loads(Path(run_log["outputs"]["report"]["path"]).read_text())
    assert Path(run_log["outputs"]["own"]["path"]).read_text() == "the run's own output\n"
    return run_id, report, token, bob_dir


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory.mktemp("sandboxed"))
    yield server
    stop_server(server)


def refused(outcome: str) -> bool:
    # A hidden file reads as empty (/dev/null is bound over it): nothing of it is visible.
    return outcome.startswith("denied:") or outcome == "ok: 0 bytes"


def test_probe_fails_every_attempt_in_the_sandbox(sandboxed: Server) -> None:
    run_id, report, token, bob_dir = probe(sandboxed)
    assert len(report) >= 12
    # Of the data directory, only the way down to the run's own directory exists.
    assert report.pop("guess_runs") == f"ok: {run_id}"
    assert {name: outcome for name, outcome in report.items() if not refused(outcome)} == {}
    assert not (bob_dir / "outputs" / "planted.txt").exists()
    assert (
        requests.get(f"{sandboxed.api}/runs", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code
        == 401
    )
    info = requests.get(f"{sandboxed.api}/service-info", timeout=10).json()
    assert info["tags"]["run_sandbox"] == "bwrap"


def test_probe_fails_in_a_user_namespace_too(tmp_path: Path) -> None:
    # No uid to drop to (as for an unprivileged service account): the leader keeps its uid but
    # runs in bwrap's user namespace with every capability dropped.
    server = start(tmp_path, WES_GATEWAY_RUN_USER="")
    try:
        run_id, report, _, bob_dir = probe(server)
    finally:
        stop_server(server)
    assert report.pop("guess_runs") == f"ok: {run_id}"
    assert {name: outcome for name, outcome in report.items() if not refused(outcome)} == {}
    assert not (bob_dir / "outputs" / "planted.txt").exists()


def test_sandboxed_run_files_belong_to_the_run_user(sandboxed: Server) -> None:
    run_id, _, _, _ = probe(sandboxed)
    run_dir = sandboxed.data_dir / "runs" / run_id
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody").pw_uid
        assert (run_dir / "outputs").stat().st_uid == nobody
        assert (run_dir / "messages.tsv").stat().st_uid == nobody  # written by the leader itself
        # The supervisor's own record of the leader is not the run's to change.
        assert (run_dir / "control").stat().st_uid == 0
        assert (run_dir / "control").stat().st_mode & 0o077 == 0
        assert sandboxed.data_dir.stat().st_mode & 0o077 == 0


def test_probe_succeeds_without_the_sandbox(tmp_path: Path) -> None:
    server = start(tmp_path, WES_GATEWAY_RUN_SANDBOX="none", WES_GATEWAY_RUN_USER="")
    try:
        _, report, token, bob_dir = probe(server)
        assert "run_sandbox is 'none'" in server.log_tail(400)
        assert requests.get(f"{server.api}/service-info", timeout=10).json()["tags"]["run_sandbox"] == "none"
        minted = requests.get(f"{server.api}/runs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert minted.status_code == 200
    finally:
        stop_server(server)
    # Loopback TCP never proves the proxy, sandbox or not.
    assert report.pop("forge_identity_tcp").startswith("denied: PermissionError: HTTP 401")
    denied = {name: outcome for name, outcome in report.items() if not outcome.startswith("ok:")}
    assert denied == {}
    assert report["environ_supervisor"] == "ok: secret seen" or report["environ_master"] == "ok: secret seen"
    assert (bob_dir / "outputs" / "planted.txt").exists()


def test_startup_refuses_a_sandbox_that_cannot_be_built(tmp_path: Path) -> None:
    # No bwrap on the PATH the service sees: start-up must stop, saying how to fix it.
    with pytest.raises(RuntimeError) as failure:
        start_server(tmp_path / "data", {"PATH": "/nonexistent"})
    assert "bwrap is not installed" in str(failure.value)
    assert "WES_GATEWAY_RUN_SANDBOX=none" in str(failure.value)


def test_inputs_under_allowed_roots_are_bound_and_nothing_beside_them(sandboxed: Server) -> None:
    shared = sandboxed.data_dir.parent / "shared"
    attempts = [["sibling", "read", str(shared / "unnamed-secret.txt"), ""]]
    (shared / "attempts.json").write_text(json.dumps(attempts))
    files = {"probe.cwl": (D / "probe" / "probe.cwl").read_bytes(), "probe.py": (D / "probe" / "probe.py").read_bytes()}
    params = {
        "script": {"class": "File", "location": "probe.py"},
        # Named by absolute URL under ALLOWED_FILE_ROOTS: the sandbox binds it (read-only).
        "attempts": {"class": "File", "location": (shared / "attempts.json").as_uri()},
    }
    run_id = submit(sandboxed, ALICE, files, "probe.cwl", params)
    assert wait(sandboxed, run_id, ALICE) == "COMPLETE", sandboxed.log_tail()
    run_log = requests.get(f"{sandboxed.api}/runs/{run_id}", headers=ALICE, timeout=10).json()
    report = json.loads(Path(run_log["outputs"]["report"]["path"]).read_text())
    assert report["sibling"].startswith("denied:"), report


def probe_with_containers(tmp: Path, env: dict[str, str]) -> dict[str, str]:
    """Alice's step asks the run's own container engine to show the service's files inside a
    container (tests/test_containers.py, with and without the sandbox)."""
    server = start(tmp, **env)
    try:
        data, tools = server.data_dir, server.data_dir.parent / "tools"
        image = "docker.io/debian:stable-slim"
        attempts = [
            ["container_database", "container", str(data / "wes.sqlite3"), image],
            ["container_htpasswd", "container", str(tools / "htpasswd"), image],
            ["container_config", "container", str(tools / "wes.toml"), image],
            ["container_shadow", "container", "/etc/shadow", image],
        ]
        _, state, run_log = run_probe(server, attempts)
        assert state == "COMPLETE", (state, server.log_tail())
    finally:
        stop_server(server)
    return dict(json.loads(Path(run_log["outputs"]["report"]["path"]).read_text()))


def test_runs_from_before_the_control_directory_are_still_adopted(tmp_path: Path) -> None:
    from wes_gateway.files.paths import RunPaths
    from wes_gateway.host import procs
    from wes_gateway.runs.supervisor import live_leader

    paths = RunPaths(root=tmp_path / "run")
    paths.root.mkdir()
    me = {"pid": os.getpid(), "start": procs.start_time(os.getpid())}
    # A leader started by the version before kept its identity in the run directory itself.
    (paths.root / "leader.json").write_text(json.dumps(me))
    (paths.root / "result.json").write_text(json.dumps({"exit_code": 3}))
    assert live_leader(paths) == os.getpid() and paths.read_result() == 3
    # Once the run has a control directory, nothing the run itself could write is believed.
    paths.control.mkdir()
    assert live_leader(paths) is None and paths.read_result() is None
    paths.leader_file.write_text(json.dumps(me))
    assert live_leader(paths) == os.getpid()


def test_names_a_run_plants_do_not_make_the_service_read_its_own_files(sandboxed: Server) -> None:
    # The run owns its directory: it can swap stdout.log for a link to the database. The
    # service must then serve nothing, not the database.
    database = sandboxed.data_dir / "wes.sqlite3"
    attempts = [
        ["plant_stdout", "plant", "stdout.log", str(database)],
        ["plant_stderr", "plant", "stderr.log", str(database)],
    ]
    run_id, _, run_log = run_probe(sandboxed, attempts)
    report = json.loads(Path(run_log["outputs"]["report"]["path"]).read_text())
    assert report["plant_stdout"].startswith("ok: planted"), report  # the test tests something
    # A run with a filesystem of its own is copied out of it as it ends, links left behind
    # (volumes.settle); without one the link is still there. Either way nothing is served.
    stdout = sandboxed.data_dir / "runs" / run_id / "stdout.log"
    assert stdout.is_symlink() or not stdout.exists()
    for stream in ("stdout", "stderr"):
        served = requests.get(f"{sandboxed.api}/runs/{run_id}/logs/{stream}", headers=ALICE, timeout=10)
        assert served.status_code == 200 and b"SQLite format 3" not in served.content
