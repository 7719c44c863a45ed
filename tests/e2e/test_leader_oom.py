"""A run's memory limit ends the run's steps, not its leader (#36 low). Toil's jobs, and all
they start, are the kernel's OOM picks before the leader: a step past the limit is killed
while the leader lives on to report it (EXECUTOR_ERROR, "memory limit"). A step that sets its
own score back down (as Podman does for its containers) is still picked first where the
service may lower the leader's (CAP_SYS_RESOURCE); where it may not, and for a step that fills
the run's own tmpfs (which no kill gives back), the leader may be killed too, and the run ends
EXECUTOR_ERROR at its memory limit all the same. A leader killed by SIGKILL is reported as
such, its launcher passing the signal on without a traceback.

Real Gunicorn, Toil, bwrap and the host's cgroups; the tools run on the host (no image)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, cmdline, container_env, leader_group, running_server, wait_for_tool
from test_run_limits import _limits_available

pytestmark = pytest.mark.skipif(bool(_limits_available()), reason=_limits_available() or "-")

MEMORY_LIMIT = "300M"

# 24 processes of 24 MiB each (576 MiB in all): each one smaller than the Toil leader, whose
# resident size (what the OOM killer weighs) is mostly what it shares with the forkserver and
# is not charged to the run, so the leader used to be the kernel's first pick.
SWARM = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [python3, -c]
arguments:
  - |
    import os, sys, time
    children = []
    for _ in range(24):
        pid = os.fork()
        if pid == 0:
            block = b"x" * (24 << 20)
            time.sleep(5)
            os._exit(0)
        children.append(pid)
        time.sleep(0.05)
    sys.exit(any(os.waitpid(pid, 0)[1] for pid in children))
inputs: []
outputs: []
"""
# As a container holds memory: in a session of its own (out of its job's group), its score set
# back to 0 (as Podman sets a container's), its 600 MiB in a memfd, which counts nowhere in its
# resident size (what the OOM killer weighs) but is given back once it is killed.
HOLDER = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [python3, -c]
arguments:
  - |
    import os, sys
    child = os.fork()
    if child == 0:
        os.setsid()
        with open("/proc/self/oom_score_adj", "w") as score:
            score.write("0")
        memory = os.memfd_create("held")
        for _ in range(60):
            os.write(memory, b"x" * (10 << 20))
        os._exit(0)
    sys.exit(os.waitpid(child, 0)[1] != 0)
inputs: []
outputs: []
"""
# The run's /dev/shm is a tmpfs of its sandbox's: what a step writes there stays charged to the
# run after the step is killed, so the run stays at its limit.
SHM = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [python3, -c]
arguments:
  - |
    with open("/dev/shm/fill", "wb") as out:
        for _ in range(100):
            out.write(b"x" * (10 << 20))
inputs: []
outputs: []
"""
# A child past the limit, which the kernel kills; then a sleeper (its command line is
# ``sleep 3141`` only once the child is gone).
OOM_THEN_SLEEP = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [python3, -c]
arguments:
  - |
    import os
    child = os.fork()
    if child == 0:
        block = b"x" * (400 << 20)
        os._exit(0)
    os.waitpid(child, 0)
    os.execvp("sleep", ["sleep", str(3000 + 141)])
inputs: []
outputs: []
"""
SLEEPER = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sleep, "3141"]
inputs: []
outputs: []
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**container_env(None), "WES_GATEWAY_RUN_MEMORY_LIMIT": MEMORY_LIMIT, "WES_GATEWAY_RUN_LIMITS": "cgroup"}
    with running_server(tmp_path_factory.mktemp("leader-oom"), env) as server:
        yield server


def _no_launcher_traceback(server: Server, run_id: str) -> None:
    stderr = server.get(f"/runs/{run_id}/logs/stderr").text
    assert "Traceback" not in stderr.split("Worker crashed with traceback")[0].split("Log from job")[0], stderr[-3000:]
    assert "OSError" not in stderr and "Invalid argument" not in stderr, stderr[-3000:]
    gunicorn = server.log_path.read_text()
    assert "Errno 22" not in gunicorn and "Invalid argument" not in gunicorn, server.log_tail()


def test_a_step_past_the_memory_limit_is_killed_and_not_its_leader(limited: Server) -> None:
    run_id = limited.submit_cwl(("swarm.cwl", SWARM), {})
    assert limited.wait(run_id, timeout=240) == "EXECUTOR_ERROR", limited.system_logs(run_id)
    logs = limited.system_logs(run_id)
    assert "memory limit" in logs, logs
    # The leader lived on: it wrote its result (Toil's own account of the failed step).
    assert "leader died" not in logs and "killed by signal" not in logs, logs
    assert limited.get(f"/runs/{run_id}").json()["run_log"]["exit_code"] == 1
    _no_launcher_traceback(limited, run_id)


def _may_lower_oom_scores() -> bool:
    """Whether this host's root (the service's, as the tests') holds CAP_SYS_RESOURCE, without
    which no process may set an OOM score below the floor it inherited (a container may not)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def test_a_step_that_lowers_its_own_score_again_ends_its_run_at_the_memory_limit(limited: Server) -> None:
    """Where the leader could lower its own score, the step is the pick; where it could not (no
    CAP_SYS_RESOURCE, as in a container), the leader and the step weigh alike but for their
    resident size, and the leader may be the kernel's pick: the run's memory limit even so."""
    run_id = limited.submit_cwl(("holder.cwl", HOLDER), {})
    assert limited.wait(run_id, timeout=240) == "EXECUTOR_ERROR", limited.system_logs(run_id)
    logs = limited.system_logs(run_id)
    assert "memory limit" in logs, logs
    if _may_lower_oom_scores():
        assert "leader" not in logs, logs
    else:
        assert "exit status" not in logs, logs  # its kill, if it was killed, named as such
    _no_launcher_traceback(limited, run_id)


def test_a_step_filling_its_runs_tmpfs_ends_the_run_at_its_memory_limit(limited: Server) -> None:
    run_id = limited.submit_cwl(("shm.cwl", SHM), {})
    assert limited.wait(run_id, timeout=240) == "EXECUTOR_ERROR", limited.system_logs(run_id)
    logs = limited.system_logs(run_id)
    assert "memory limit" in logs, logs
    _no_launcher_traceback(limited, run_id)


def _leader_proper(launcher: int) -> int:
    """The launcher's child that runs Toil (the other is the sandbox's bwrap holder)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    leaders = [int(pid) for pid in children if b"multiprocessing.forkserver" in cmdline(int(pid))]
    assert len(leaders) == 1, [(pid, cmdline(int(pid))) for pid in children]
    return leaders[0]


def _kill_leader(server: Server, run_id: str) -> None:
    wait_for_tool(run_id, b"sleep\x003141", server.data_dir)
    (launcher,) = leader_group(server.data_dir, run_id)
    os.kill(_leader_proper(launcher), signal.SIGKILL)


def test_a_leader_killed_by_sigkill_is_reported_as_such(limited: Server) -> None:
    run_id = limited.submit_cwl(("sleeper.cwl", SLEEPER), {})
    _kill_leader(limited, run_id)
    assert limited.wait(run_id, timeout=120) == "SYSTEM_ERROR"
    logs = limited.system_logs(run_id)
    assert "the leader was killed by signal 9 (SIGKILL)" in logs, logs
    assert "memory limit" not in logs, logs
    _no_launcher_traceback(limited, run_id)


def test_a_leader_killed_in_a_run_at_its_memory_limit_ends_it_as_the_runs_error(limited: Server) -> None:
    """As when the kernel has no step left to kill at the limit and takes the leader: the run
    met its own limit, which is the run's doing (EXECUTOR_ERROR), and the kill is named."""
    run_id = limited.submit_cwl(("oom-then-sleep.cwl", OOM_THEN_SLEEP), {})
    _kill_leader(limited, run_id)
    assert limited.wait(run_id, timeout=120) == "EXECUTOR_ERROR"
    logs = limited.system_logs(run_id)
    assert "the leader was killed by signal 9 (SIGKILL)" in logs and "memory limit" in logs, logs
    _no_launcher_traceback(limited, run_id)
