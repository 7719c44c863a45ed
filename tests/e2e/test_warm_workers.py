"""Warm Toil workers (engines/toil_workers.py): a job's worker is forked from its leader's
zygote, as the leader's own child, instead of started as a new interpreter. test_speed
compares whole runs with and without; here, the processes themselves: the worker really is
forked (and really is not with the setting off), Toil's child is the worker itself (no shell,
no program started in between), and every way a job is ended still reaches the job's tool.

The kill tests use a gateway without the sandbox: the sandbox's end kills everything in it,
which would hide a gap in the chain that ends a job. A third gateway, with the sandbox (the
default), shows that the zygote forks the workers inside it too."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    Server,
    cmdline,
    kill_all_leaders,
    lasting_processes,
    leader_group,
    leftover_processes,
    pid_gone,
    start_server,
    stop_server,
    wait_for_tool,
)

from wes_gateway.host import limits
from wes_gateway.host.procs import parent_pid

D = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    bare = {"WES_GATEWAY_ACCESS_LOG": "/dev/null", "WES_GATEWAY_RUN_SANDBOX": "none"}
    servers = {
        "warm": start_server(tmp_path_factory.mktemp("warm"), bare, workers=1),
        "cold": start_server(tmp_path_factory.mktemp("cold"), {**bare, "WES_GATEWAY_TOIL_WARM_WORKERS": "false"}, 1),
        # The default deployment: the zygote, its socket and its forks inside the run's sandbox.
        "sandboxed": start_server(tmp_path_factory.mktemp("sandboxed"), {"WES_GATEWAY_ACCESS_LOG": "/dev/null"}, 1),
    }
    yield servers
    for server in servers.values():
        stop_server(server)
        kill_all_leaders(server.data_dir)


def parent(pid: int) -> int:
    found = parent_pid(pid)
    assert found is not None, f"process {pid} is gone"
    return found


def sleeping(server: Server, seconds: int) -> tuple[str, int]:
    run_id = server.submit_ok(
        {"sleep.cwl": D / "sleep.cwl"},
        workflow_url="sleep.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"seconds": seconds},
    )
    tool, _ = wait_for_tool(run_id, b"sleep\x00%d" % seconds, server.data_dir)
    return run_id, tool


def until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.parametrize("kind", ["warm", "cold", "sandboxed"])
def test_the_worker_is_forked_only_when_warm_and_cancel_ends_it_all(gateways: dict[str, Server], kind: str) -> None:
    server = gateways[kind]
    run_id, tool = sleeping(server, {"warm": 611, "cold": 612, "sandboxed": 613}[kind])
    worker = parent(tool)
    chain = [tool, worker]
    if kind != "cold":
        # Toil's child is the worker itself: a fork (no _toil_worker command line of its own)
        # that the zygote made the leader's child, the leader of its own session, as Toil's
        # Popen makes a stock worker; the zygote is the leader's child too.
        assert b"_toil_worker" not in cmdline(worker)
        leader = parent(worker)
        assert {parent(leader)} == leader_group(server.data_dir, run_id)
        assert os.getsid(worker) == worker and os.getpgid(worker) == worker
        assert int(Path(f"/proc/{worker}/oom_score_adj").read_text()) == limits.TASK_OOM_SCORE_ADJ
        zygotes = [
            pid
            for pid in leftover_processes(run_id, leader_group(server.data_dir, run_id))
            if pid != worker and parent_pid(pid) == leader and os.getsid(pid) != pid
        ]
        assert zygotes, "no zygote beside the worker"
        chain += zygotes
    else:
        assert cmdline(worker).split(b"\x00")[1].endswith(b"_toil_worker"), cmdline(worker)
    assert server.post(f"/runs/{run_id}/cancel").status_code == 200
    assert server.wait(run_id, timeout=60) == "CANCELED"
    assert until(lambda: all(pid_gone(pid) for pid in chain), 10), [(p, cmdline(p)[:80]) for p in chain]
    assert lasting_processes(run_id, leader_group(server.data_dir, run_id)) == []


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_what_toil_sends_its_child_s_group_ends_its_job(gateways: dict[str, Server], signum: int) -> None:
    """Toil ends a job by killing its child's group: with warm workers that child is the
    worker, and the job's tool is in its group."""
    server = gateways["warm"]
    run_id, tool = sleeping(server, 620 + signum)
    worker = parent(tool)
    assert os.getpgid(tool) == worker == os.getsid(worker)
    sent = time.monotonic()
    os.killpg(worker, signum)
    assert until(lambda: pid_gone(tool), 10), f"the tool outlived its worker ({signal.Signals(signum).name})"
    assert time.monotonic() - sent < 5
    server.post(f"/runs/{run_id}/cancel")
    assert server.wait(run_id, timeout=60) in {"CANCELED", "EXECUTOR_ERROR"}
