"""Runs survive: whole-service kill -9, HUP reloads, worker recycling, cancels at odd moments."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import (
    Server,
    cmdline,
    kill_all_leaders,
    leader_group,
    leftover_processes,
    run_groups,
    start_server,
    stop_server,
    wait_until,
)

from wes_gateway import store

D = Path(__file__).parent.parent / "data"
FAST = {"WES_GATEWAY_LEASE_SECONDS": "4", "WES_GATEWAY_POLL_INTERVAL": "0.2"}


def slow_echo(server: Server, message: str, seconds: int = 10) -> str:
    return server.submit_ok(
        {"slow_echo.cwl": D / "slow_echo.cwl"},
        workflow_url="slow_echo.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"seconds": seconds, "message": message},
    )


def tool_running(data_dir: Path, run_id: str) -> bool:
    return any(b"sleep" in cmdline(pid) for pid in leftover_processes(run_id, leader_group(data_dir, run_id)))


def output_of(server: Server, run_id: str) -> str:
    run_log = server.get(f"/runs/{run_id}").json()
    return Path(run_log["outputs"]["out"]["path"]).read_text()


def open_store(server: Server) -> None:
    store.open_database(f"sqlite:///{server.data_dir / 'wes.sqlite3'}")


def test_kill_9_of_the_whole_service_loses_no_run(tmp_path: Path) -> None:
    first = start_server(tmp_path, FAST)
    try:
        runs = [slow_echo(first, f"survivor-{i}", seconds=12) for i in range(3)]
        wait_until(lambda: all(tool_running(tmp_path, r) for r in runs), 120, "three running tools")
        groups = [run_groups(r, leader_group(tmp_path, r)) | leader_group(tmp_path, r) for r in runs]
        for run_id in runs:
            assert first.get(f"/runs/{run_id}/status").json()["state"] == "RUNNING"
    finally:
        # kill -9 of the master, every worker, the supervisor and its forkserver at once.
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    # The third run also loses its leader and jobs, as in a reboot: it must be resumed.
    for pid in leftover_processes(runs[2], groups[2]):
        # Killing the launcher ends the run's sandbox, and the kernel then kills the rest itself.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not leftover_processes(runs[2]), 10, "run 3 processes to die")
    second = start_server(tmp_path, FAST)
    try:
        for i, run_id in enumerate(runs):
            assert second.wait(run_id, timeout=240) == "COMPLETE", second.get(f"/runs/{run_id}").text
            assert output_of(second, run_id) == f"survivor-{i}\n"
        log = second.log_tail(400)
        assert log.count("adopting live leader") == 2, log
        # Task records carry on across the restart: one task per run, finished, no duplicates.
        for run_id in runs:
            tasks = second.get(f"/runs/{run_id}/tasks").json()["task_logs"]
            assert len(tasks) == 1 and tasks[0]["exit_code"] == 0, tasks
        resumed = second.get(f"/runs/{runs[2]}").json()["run_log"]["system_logs"]
        assert any("resumed with --restart" in line for line in resumed), resumed
    finally:
        stop_server(second)
        kill_all_leaders(tmp_path)


def test_hup_reload_and_worker_recycling_keep_runs_going(tmp_path: Path) -> None:
    server = start_server(tmp_path, {**FAST, "WES_GATEWAY_MAX_REQUESTS": "15"}, workers=2)
    try:
        run_id = slow_echo(server, "still here", seconds=8)
        server.wait(run_id, {"RUNNING"})
        os.kill(server.process.pid, signal.SIGHUP)
        for _ in range(60):  # enough requests to recycle every worker a few times
            try:
                server.get(f"/runs/{run_id}/status")
            except Exception:
                time.sleep(0.2)
        assert server.wait(run_id, timeout=120) == "COMPLETE"
        assert output_of(server, run_id) == "still here\n"
        log = server.log_tail(2000)
        assert "handling signal: hup" in log.lower()
        assert "maximum request limit of 15 exceeded" in log.lower()
        assert log.count("run supervisor started") == 1
    finally:
        stop_server(server)


def _queued_then_orphaned(tmp_path: Path, state: str) -> tuple[Server, str]:
    """A run claimed by a supervisor that died before (or after) starting its leader."""
    server = start_server(tmp_path, {**FAST, "WES_GATEWAY_SUPERVISOR": "off"})
    run_id = slow_echo(server, "never", seconds=30)
    open_store(server)
    assert store.claim_next("ghost-supervisor", "host-a", -1).run_id == run_id  # lease already lapsed
    if state == store.RUNNING:
        assert store.transition(run_id, store.RUNNING)
    store.database.close()
    return server, run_id


def test_cancel_during_initializing_and_across_a_restart(tmp_path: Path) -> None:
    server, run_id = _queued_then_orphaned(tmp_path, store.INITIALIZING)
    try:
        assert server.get(f"/runs/{run_id}/status").json()["state"] == "INITIALIZING"
        assert server.post(f"/runs/{run_id}/cancel").json() == {"run_id": run_id}
        assert server.get(f"/runs/{run_id}/status").json()["state"] == "CANCELING"
    finally:
        stop_server(server)
    restarted = start_server(tmp_path, FAST)
    try:
        assert restarted.wait(run_id, timeout=60) == "CANCELED"
        assert leftover_processes(run_id) == []
    finally:
        stop_server(restarted)


def test_orphan_that_never_started_is_started(tmp_path: Path) -> None:
    server, run_id = _queued_then_orphaned(tmp_path, store.INITIALIZING)
    stop_server(server)
    restarted = start_server(tmp_path, FAST)
    try:
        restarted.post(f"/runs/{run_id}/cancel")  # 30 s of sleep need not be waited for
        assert restarted.wait(run_id, timeout=90) == "CANCELED"
    finally:
        stop_server(restarted)


def test_unresumable_run_is_system_error_with_reason(tmp_path: Path) -> None:
    server, run_id = _queued_then_orphaned(tmp_path, store.RUNNING)
    stop_server(server)
    restarted = start_server(tmp_path, FAST)
    try:
        assert restarted.wait(run_id, timeout=60) == "SYSTEM_ERROR"
        logs = restarted.get(f"/runs/{run_id}").json()["run_log"]["system_logs"]
        assert any("cannot resume" in line for line in logs), logs
    finally:
        stop_server(restarted)


def test_a_leader_lost_while_making_its_job_store_is_started_again(tmp_path: Path) -> None:
    """A job store the workflow never began in (Toil had not yet recorded its root job):
    --restart would refuse it, so the run starts afresh."""
    server, run_id = _queued_then_orphaned(tmp_path, store.RUNNING)
    stop_server(server)
    half_made = tmp_path / "runs" / run_id / "jobstore"
    (half_made / "shared").mkdir(parents=True)
    (half_made / "config.pickle").write_bytes(b"")  # begun, never finished
    restarted = start_server(tmp_path, FAST)
    try:
        assert restarted.wait(run_id, timeout=180) == "COMPLETE", restarted.get(f"/runs/{run_id}").text
        logs = restarted.get(f"/runs/{run_id}").json()["run_log"]["system_logs"]
        assert any("before its workflow began; started again" in line for line in logs), logs
        assert output_of(restarted, run_id) == "never\n"
    finally:
        stop_server(restarted)


def submit_storm(server: Server, count: int = 200, threads: int = 20) -> list[str]:
    def one(i: int) -> tuple[int, str]:
        response = server.submit(
            {"echo.cwl": D / "echo.cwl"},
            workflow_url="echo.cwl",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"message": f"storm-{i}"},
        )
        return response.status_code, response.text

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, range(count)))
    assert [status for status, _ in results] == [200] * count, [r for r in results if r[0] != 200][:3]
    ids = [json.loads(text)["run_id"] for _, text in results]
    assert len(set(ids)) == count
    return ids


def assert_storm_completes(server: Server, ids: list[str]) -> None:
    listed: set[str] = set()
    token = ""
    while True:
        page = server.get("/runs", params={"page_size": 100, **({"page_token": token} if token else {})}).json()
        listed |= {run["run_id"] for run in page["runs"]}
        token = page["next_page_token"]
        if not token:
            break
    assert set(ids) <= listed
    for run_id in ids:
        assert server.wait(run_id, timeout=1200) == "COMPLETE"
    assert "database is locked" not in server.log_tail(100000)


def test_200_concurrent_submissions_all_complete(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"WES_GATEWAY_MAX_CONCURRENT_RUNS": "4"}, workers=4)
    try:
        assert_storm_completes(server, submit_storm(server))
    finally:
        stop_server(server)


def _supervisor_pid(server: Server) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if parent == server.process.pid and b"supervise" in command:
                return int(entry.name)
    return None


def _health_within(server: Server, status: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.get("/health").status_code == status:
            return True
        time.sleep(0.2)
    return False


def test_a_stalled_supervisor_fails_health_and_a_killed_one_is_restarted(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", {"WES_GATEWAY_LEASE_SECONDS": "3"})
    try:
        first = _supervisor_pid(server)
        assert first is not None
        # Stopped even before its first beat (start-up checks take a while on a busy host),
        # it is stuck all the same: the master's start of it counts as its first sign of life.
        # Stuck: /health says so once it has been silent longer than a lease, and recovers.
        os.kill(first, signal.SIGSTOP)
        try:
            assert _health_within(server, 503, 15), "health stayed ok with the supervisor stopped"
            body = server.get("/health").json()
            assert body["status_code"] == 503 and "supervisor" in body["msg"]
        finally:
            os.kill(first, signal.SIGCONT)
        assert _health_within(server, 200, 15)
        # Killed: the master starts another, which runs what is submitted.
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (_supervisor_pid(server) in (None, first)) and time.monotonic() < deadline:
            time.sleep(0.2)
        second = _supervisor_pid(server)
        assert second not in (None, first), "no new supervisor after the first was killed"
        run_id = server.submit_cwl(D / "echo.cwl", {"message": "after a restart"})
        assert server.wait(run_id, timeout=120) == "COMPLETE"
        assert server.get("/health").status_code == 200
    finally:
        stop_server(server)
