"""Two gateway hosts on one PostgreSQL and one shared directory. Host B's supervisor runs in a
PID namespace of its own, so that, like a real second host, it cannot see host A's processes:
only the store tells it whether A's leader lives."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Server, start_server, stop_server, wait_until
from postgres import Postgres
from test_durability import slow_echo

from wes_gateway import store

LEASE = 4.0


def host_env(postgres: Postgres, shared: Path, data_dir: Path, host: str) -> dict[str, str]:
    return {
        "WES_GATEWAY_DATABASE_URL": postgres.url,
        "WES_GATEWAY_SHARED_DIR": str(shared),
        "WES_GATEWAY_DATA_DIR": str(data_dir),
        "WES_GATEWAY_HOST_ID": host,
        "WES_GATEWAY_LEASE_SECONDS": str(LEASE),
        "WES_GATEWAY_POLL_INTERVAL": "0.2",
    }


def start_supervisor(env: dict[str, str], log: Path, own_pid_namespace: bool) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WES_GATEWAY_")} | env
    Path(env["WES_GATEWAY_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "wes_gateway.cli", "supervise"]
    if own_pid_namespace:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    return subprocess.Popen(
        argv, cwd=ROOT, env=full, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# Host A's supervisor, by its server's base URL (the hosts fixture starts it).
_SUPERVISORS: dict[str, subprocess.Popen[bytes]] = {}


def supervisor_of(server: Server) -> int:
    process = _SUPERVISORS.get(server.base)
    if process is None or process.poll() is not None:
        raise AssertionError("host A has no supervisor")
    return process.pid


def launcher_pid(shared: Path, run_id: str) -> int:
    return int(json.loads((shared / "runs" / run_id / "control" / "leader.json").read_text())["pid"])


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, f"pid {pid} to die")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def run_row(postgres: Postgres, run_id: str) -> store.Run:
    store.open_database(postgres.url)
    try:
        run = store.get_run(run_id)
        assert run is not None
        return run
    finally:
        store.database.close()


def completions(*logs: Path) -> int:
    return sum(log.read_text(errors="replace").count(" -> COMPLETE") for log in logs if log.exists())


@pytest.fixture
def hosts(postgres: Postgres, shared: Path, tmp_path: Path) -> Iterator[tuple[Server, dict[str, str], Path]]:
    env = host_env(postgres, shared, tmp_path / "host-a", "host-a")
    # Host A's supervisor runs beside its Gunicorn (`wes-gateway supervise`), not under it:
    # these tests kill it and watch what follows, which the master's restart of a dead
    # supervisor would hide.
    server = start_server(tmp_path / "host-a", {**env, "WES_GATEWAY_SUPERVISOR": "off"})
    own = {k: v for k, v in server.env.items() if k.startswith("WES_GATEWAY_") and k != "WES_GATEWAY_SUPERVISOR"}
    _SUPERVISORS[server.base] = start_supervisor(own, tmp_path / "host-a-supervisor.log", own_pid_namespace=False)
    yield server, host_env(postgres, shared, tmp_path / "host-b", "host-b"), tmp_path
    stop(_SUPERVISORS.pop(server.base))
    stop_server(server)


def test_a_dead_supervisor_whose_leader_lives_is_not_replaced(
    hosts: tuple[Server, dict[str, str], Path], postgres: Postgres, shared: Path
) -> None:
    host_a, env_b, tmp = hosts
    # Long enough that the leader is still at work when A's supervisor comes back, however
    # slow a loaded machine makes the wait and the restart.
    run_id = slow_echo(host_a, "only once", seconds=60)
    host_a.wait(run_id, {"RUNNING"}, timeout=120)
    token = run_row(postgres, run_id).leader_token
    log_b = tmp / "host-b.log"
    b = start_supervisor(env_b, log_b, own_pid_namespace=True)
    revived = None
    try:
        supervisor_a = supervisor_of(host_a)
        kill(supervisor_a)
        # A's lease lapses, but its leader beats on: B must leave the run alone.
        time.sleep(LEASE * 3)
        row = run_row(postgres, run_id)
        assert row.leader_token == token and row.host_id == "host-a" and row.state == "RUNNING"
        assert row.lease_until is not None and row.lease_until < time.time(), "A's lease should have lapsed"
        assert "taking the run over" not in log_b.read_text()
        # A's supervisor comes back and adopts its own leader.
        log_a = tmp / "host-a-again.log"
        revived = start_supervisor({**host_a.env, "WES_GATEWAY_DATA_DIR": str(host_a.data_dir)}, log_a, False)
        assert host_a.wait(run_id, timeout=180) == "COMPLETE", host_a.get(f"/runs/{run_id}").text
        assert "adopting live leader" in log_a.read_text()
        run_log = host_a.get(f"/runs/{run_id}").json()
        assert Path(run_log["outputs"]["out"]["path"]).read_text() == "only once\n"
        assert not any("--restart" in line for line in run_log["run_log"]["system_logs"])
        assert run_row(postgres, run_id).leader_token == token  # never a second leader
    finally:
        stop(b)
        if revived is not None:
            stop(revived)


def test_another_host_resumes_once_the_heartbeat_lapses(
    hosts: tuple[Server, dict[str, str], Path], postgres: Postgres, shared: Path
) -> None:
    host_a, env_b, tmp = hosts
    run_id = slow_echo(host_a, "one set of outputs", seconds=15)
    host_a.wait(run_id, {"RUNNING"}, timeout=120)
    wait_until(lambda: (shared / "runs" / run_id / "jobstore").exists(), 60, "the job store")
    log_b = tmp / "host-b.log"
    b = start_supervisor(env_b, log_b, own_pid_namespace=True)
    try:
        # Host A dies whole: its supervisor and its leader.
        kill(supervisor_of(host_a))
        kill(launcher_pid(shared, run_id))
        killed_at = time.time()
        assert host_a.wait(run_id, timeout=240) == "COMPLETE", host_a.get(f"/runs/{run_id}").text + log_b.read_text()
        row = run_row(postgres, run_id)
        assert row.host_id == "host-b"
        assert row.heartbeat_at is not None
        text = log_b.read_text()
        assert "leader on host host-a stopped beating" in text, text
        run_log = host_a.get(f"/runs/{run_id}").json()
        assert any("resumed with --restart" in line for line in run_log["run_log"]["system_logs"])
        outputs = sorted(p.name for p in (shared / "runs" / run_id / "outputs").iterdir())
        assert outputs == ["out.txt"], outputs
        assert Path(run_log["outputs"]["out"]["path"]).read_text() == "one set of outputs\n"
        assert completions(log_b, host_a.log_path) == 1
        assert time.time() - killed_at >= LEASE  # not before the heartbeat lapsed
    finally:
        stop(b)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def test_a_frozen_host_that_thaws_finds_itself_fenced_out(
    hosts: tuple[Server, dict[str, str], Path], postgres: Postgres, shared: Path
) -> None:
    host_a, env_b, tmp = hosts
    run_id = slow_echo(host_a, "fenced", seconds=15)
    host_a.wait(run_id, {"RUNNING"}, timeout=120)
    wait_until(lambda: (shared / "runs" / run_id / "jobstore").exists(), 60, "the job store")
    log_b = tmp / "host-b.log"
    b = start_supervisor(env_b, log_b, own_pid_namespace=True)
    launcher = launcher_pid(shared, run_id)
    frozen = [supervisor_of(host_a), *descendants(launcher)]
    try:
        # Host A stops dead (a VM paused, a partition): its supervisor, leader and tools.
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: run_row(postgres, run_id).host_id == "host-b", 60, "host B to take the run over")
        # Then A thaws: its leader's next heartbeat finds a successor's token and stops it.
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        wait_until(lambda: not Path(f"/proc/{launcher}").exists() or _zombie(launcher), 30, "A's leader to stop")
        assert host_a.wait(run_id, timeout=240) == "COMPLETE", host_a.get(f"/runs/{run_id}").text
        stderr = (shared / "runs" / run_id / "stderr.log").read_text(errors="replace")
        assert "stopping this leader: another leader owns this run" in stderr
        run_log = host_a.get(f"/runs/{run_id}").json()
        assert Path(run_log["outputs"]["out"]["path"]).read_text() == "fenced\n"
        assert sorted(p.name for p in (shared / "runs" / run_id / "outputs").iterdir()) == ["out.txt"]
        assert completions(log_b, host_a.log_path) == 1
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        stop(b)
