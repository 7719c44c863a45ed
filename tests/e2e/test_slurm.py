"""Runs as Slurm jobs through Toil's Slurm batch system, on a private single-node cluster:
real Gunicorn, real Toil, real munge, slurmctld and slurmd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import slurm_cluster as slurm
from conftest import DATA, ROOT, Server, kill_all_leaders, start_server, stop_server, wait_until

pytestmark = pytest.mark.skipif(slurm.available() is not None, reason=str(slurm.available()))

W = DATA / "wdl"
GRACE = 5.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[slurm.Slurm]:
    running = slurm.start_slurm()
    yield running
    running.stop()


def slurm_env(cluster: slurm.Slurm, shared: Path, **extra: str) -> dict[str, str]:
    env = {
        "SLURM_CONF": str(cluster.conf),
        "WES_GATEWAY_BATCH_SYSTEM": "slurm",
        "WES_GATEWAY_SHARED_DIR": str(shared),
        # Containers on Slurm nodes are not covered here: WDL goes through the test-only stand-in.
        "WES_GATEWAY_CONTAINER_ENGINE": "none",
        "WES_GATEWAY_EXTRA_PATH": str(ROOT / "tests" / "e2e" / "bin"),
        "WES_GATEWAY_CANCEL_GRACE_SECONDS": str(GRACE),
        # The leader keeps root inside a user namespace, so that its Slurm jobs (run outside
        # any sandbox) can use this machine's Python under /root; test_jobs_run_as_run_user
        # covers the drop to a run user.
        "WES_GATEWAY_RUN_USER": "",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def gateway(cluster: slurm.Slurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    shared = Path(tempfile.mkdtemp(prefix="wes-gateway-shared-"))
    os.chmod(shared, 0o755)
    server = start_server(tmp_path_factory.mktemp("slurm-gateway"), slurm_env(cluster, shared))
    yield server
    stop_server(server)
    kill_all_leaders(shared)
    shutil.rmtree(shared, ignore_errors=True)


def run_jobs(cluster: slurm.Slurm, run_id: str) -> list[dict[str, str]]:
    """The run's Slurm jobs, found by the label the gateway gives them."""
    return [job for job in cluster.jobs() if job.get("Comment") == f"wes-gateway-run-{run_id}"]


def cwl(server: Server, workflow: str, files: list[str], params: dict) -> str:
    return server.submit_ok(
        {name: DATA / name for name in files},
        workflow_url=workflow,
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params=params,
    )


def test_cwl_scatter_runs_as_slurm_jobs(gateway: Server, cluster: slurm.Slurm) -> None:
    run_id = cwl(gateway, "scatter.cwl", ["scatter.cwl", "echo.cwl"], {"messages": ["a", "b", "c"]})
    assert gateway.wait(run_id, timeout=300) == "COMPLETE", gateway.get(f"/runs/{run_id}").text
    outs = gateway.get(f"/runs/{run_id}").json()["outputs"]["outs"]
    assert sorted(Path(item["path"]).read_text() for item in outs) == ["a\n", "b\n", "c\n"]
    jobs = run_jobs(cluster, run_id)
    echo_jobs = [job for job in jobs if job["JobName"].endswith("echo.cwl")]
    assert len(echo_jobs) == 3 and all(job["JobState"] == "COMPLETED" for job in echo_jobs), jobs
    tasks = gateway.get(f"/runs/{run_id}/tasks").json()["task_logs"]
    assert sorted(task["name"] for task in tasks) == ["say[0]", "say[1]", "say[2]"]
    slurm_ids = {job["JobId"] for job in jobs}
    for task in tasks:
        lines = dict(line.split(": ", 1) for line in task["system_logs"])
        assert lines["batch_system"] == "SlurmBatchSystem"
        assert lines["batch_job_id"] in slurm_ids
        assert lines["node"] == "localhost"  # the node's Slurm name
    info = gateway.get("/service-info").json()
    assert info["tags"]["batch_system"] == "slurm"


def test_wdl_runs_on_slurm(gateway: Server, cluster: slurm.Slurm) -> None:
    response = gateway.submit(
        {"chain.wdl": W / "chain.wdl", "lib/tasks.wdl": W / "lib" / "tasks.wdl", "data/in.txt": b"abc def\n"},
        workflow_url="chain.wdl",
        workflow_type="WDL",
        workflow_type_version="1.0",
        workflow_params={"chain.infile": "data/in.txt", "chain.names": ["ann", "bob"]},
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert gateway.wait(run_id, timeout=400) == "COMPLETE", gateway.get(f"/runs/{run_id}").text
    outputs = gateway.get(f"/runs/{run_id}").json()["outputs"]
    assert outputs["chain.greetings"] == ["hello ann", "hello bob"]
    assert Path(outputs["chain.upper"]["path"]).read_text() == "ABC DEF\n"
    jobs = run_jobs(cluster, run_id)
    assert len(jobs) >= 4 and all(job["JobState"] == "COMPLETED" for job in jobs), jobs


def test_cancel_leaves_no_slurm_job(gateway: Server, cluster: slurm.Slurm) -> None:
    run_id = cwl(gateway, "sleep.cwl", ["sleep.cwl"], {"seconds": 600})
    wait_until(lambda: any(job["JobState"] == "RUNNING" for job in run_jobs(cluster, run_id)), 120, "a running job")
    cancelled_at = time.monotonic()
    assert gateway.post(f"/runs/{run_id}/cancel").status_code == 200
    label = f"wes-gateway-run-{run_id}"

    def queue_empty() -> bool:
        listed = cluster.run("squeue", "--noheader", "--format=%k").split()
        return label not in listed

    wait_until(queue_empty, GRACE * 2, "squeue to show none of the run's jobs")
    print(f"squeue empty {time.monotonic() - cancelled_at:.1f} s after the cancel")
    assert gateway.wait(run_id, timeout=60) == "CANCELED"


def test_kill_9_of_the_whole_service_resumes_without_rerunning_finished_jobs(
    cluster: slurm.Slurm, shared: Path, tmp_path: Path
) -> None:
    env = slurm_env(cluster, shared, WES_GATEWAY_LEASE_SECONDS="4")
    first = start_server(tmp_path, env)
    try:
        files = ["echo_then_wait.cwl", "echo.cwl", "wait_then_cat.cwl"]
        run_id = cwl(first, "echo_then_wait.cwl", files, {"message": "resumed", "seconds": 20})

        def waiting() -> bool:
            names = {job["JobName"]: job["JobState"] for job in run_jobs(cluster, run_id)}
            said = any(name.endswith("echo.cwl") and state == "COMPLETED" for name, state in names.items())
            return said and any(name.endswith("wait_then_cat.cwl") and s == "RUNNING" for name, s in names.items())

        wait_until(waiting, 180, "the first step done and the second running on Slurm")
    finally:
        # kill -9 of everything: master, workers, supervisor, forkserver, and the leader (its
        # launcher; the kernel then ends the sandbox and all in it).
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        kill_leader(shared, run_id)
    second = start_server(tmp_path, env)
    try:
        assert second.wait(run_id, timeout=300) == "COMPLETE", second.get(f"/runs/{run_id}").text
        run_log = second.get(f"/runs/{run_id}").json()
        assert Path(run_log["outputs"]["out"]["path"]).read_text() == "resumed\n"
        assert any("resumed with --restart" in line for line in run_log["run_log"]["system_logs"])
        names = [job["JobName"] for job in run_jobs(cluster, run_id)]
        # The finished step was not run again: Toil's job store knew it was done.
        assert sum(name.endswith("echo.cwl") for name in names) == 1, names
        assert sum(name.endswith("wait_then_cat.cwl") for name in names) == 2, names
        # The second step's first job, orphaned by the kill, was cancelled before the resume.
        assert not cluster.queued()
    finally:
        stop_server(second)
        kill_all_leaders(shared)


def kill_leader(shared: Path, run_id: str) -> None:
    recorded = json.loads((shared / "runs" / run_id / "control" / "leader.json").read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(recorded["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{recorded['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _run_user_reaches_python() -> bool:
    probe = ["runuser", "-u", "nobody", "--", sys.executable, "-c", "import toil"]
    return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the drop to a run user needs a root supervisor")
def test_jobs_run_as_run_user(cluster: slurm.Slurm, shared: Path, tmp_path: Path) -> None:
    env = slurm_env(cluster, shared, WES_GATEWAY_RUN_USER="nobody")
    if not _run_user_reaches_python():
        # Here Python lives under /root (0700): every job would start as nobody and fail to
        # run Toil's worker, deep in the run's log. The service refuses to start instead.
        with pytest.raises(RuntimeError, match="exited early") as caught:
            start_server(tmp_path, env)
        assert "cannot execute this service's Python" in str(caught.value), caught.value
        assert sys.executable in str(caught.value)
        return
    server = start_server(tmp_path, env)
    try:
        run_id = cwl(server, "echo.cwl", ["echo.cwl"], {"message": "as nobody"})
        wait_until(lambda: run_jobs(cluster, run_id), 120, "the run's first Slurm job")
        state = server.wait(run_id, timeout=300)
        users = {job["UserId"] for job in run_jobs(cluster, run_id)}
        assert users == {"nobody(65534)"}, users
        assert state == "COMPLETE", server.get(f"/runs/{run_id}").text
    finally:
        stop_server(server)
        kill_all_leaders(shared)


def test_refuses_to_start_without_a_shared_dir(tmp_path: Path) -> None:
    env = {"WES_GATEWAY_BATCH_SYSTEM": "slurm"}
    with pytest.raises(RuntimeError, match="exited early") as caught:
        start_server(tmp_path, env)
    assert "set shared_dir" in str(caught.value)


def test_batch_system_is_offered_only_from_the_deployment_list(gateway: Server) -> None:
    info = gateway.get("/service-info").json()
    offered = {p["name"] for p in info["default_workflow_engine_parameters"]}
    assert "--batchSystem" not in offered and "--slurmPartition" not in offered
    response = gateway.submit(
        {"echo.cwl": DATA / "echo.cwl"},
        workflow_url="echo.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"message": "x"},
        workflow_engine_parameters={"--batchSystem": "single_machine"},
    )
    assert response.status_code == 400 and "--batchSystem is not allowed" in response.json()["msg"]
    assert requests.get(gateway.api + "/runs", timeout=10).status_code == 200
