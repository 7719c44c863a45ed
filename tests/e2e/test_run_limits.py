"""Per-run memory and process limits (#26 item 9): a memory hog and a fork bomb each end
their own run, while the service and a second run carry on; with the limits off, the same
steps take what they like (the protection shown off).

Real Gunicorn, Toil, bwrap and the host's cgroups; the tools run on the host (no image)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, container_env, leftover_processes, running_server, start_server

MEMORY_LIMIT = "700M"
PROCESS_LIMIT = 300

HOG = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [python3, -c, "b = bytearray(2 * 1024 ** 3); print(len(b))"]
inputs: []
outputs: []
"""
# A bounded bomb: 600 sleepers started as fast as the shell can, then waited for. A failed
# fork does not stop the loop (as in a real bomb); at the limit nothing more can start.
BOMB = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c]
arguments:
  - "for i in `seq 600`; do sleep 90 & done; wait"
inputs: []
outputs: []
"""
ECHO = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [echo, fine]
inputs: []
outputs: []
"""


def _limits_available() -> str:
    import os

    from wes_gateway.config import load_settings
    from wes_gateway.host import limits

    if os.geteuid() != 0:
        return "needs root for cgroups"
    return "" if limits.check(load_settings({}, run_limits="auto")) != "none" else "no usable cgroups here"


pytestmark = pytest.mark.skipif(bool(_limits_available()), reason=_limits_available() or "-")


def _env(engine_env: dict[str, str], limits: str) -> dict[str, str]:
    return {
        **engine_env,
        "WES_GATEWAY_RUN_MEMORY_LIMIT": MEMORY_LIMIT,
        "WES_GATEWAY_RUN_MAX_PROCESSES": str(PROCESS_LIMIT),
        "WES_GATEWAY_RUN_LIMITS": limits,
    }


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("limits"), _env(engine_env, "cgroup")) as server:
        yield server


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("limits"), _env(engine_env, "none")) as server:
        yield server


def _sleepers() -> int:
    """The bomb's sleepers on this host (the tool's environment is cwltool's, with no marker)."""
    from pathlib import Path

    count = 0
    for entry in Path("/proc").iterdir():
        try:
            count += entry.name.isdigit() and (entry / "cmdline").read_bytes() == b"sleep\x0090\x00"
        except OSError:
            pass
    return count


def test_a_memory_hog_ends_its_own_run_only(limited: Server) -> None:
    tags = limited.get("/service-info").json()["tags"]
    assert (tags["run_memory_limit"], tags["run_max_processes"]) == (str(700 << 20), str(PROCESS_LIMIT))
    hog = limited.submit_cwl(("hog.cwl", HOG), {})
    other = limited.submit_cwl(("echo.cwl", ECHO), {})
    assert limited.wait(hog, timeout=180) == "EXECUTOR_ERROR"
    assert "memory limit" in limited.system_logs(hog), limited.system_logs(hog)
    assert limited.wait(other, timeout=180) == "COMPLETE"
    assert limited.get("/health").status_code == 200


def test_a_fork_bomb_ends_its_own_run_only(limited: Server) -> None:
    bomb = limited.submit_cwl(("bomb.cwl", BOMB), {})
    other = limited.submit_cwl(("echo.cwl", ECHO), {})
    # Ended at its limit, well before its sleepers would have (90 s).
    assert limited.wait(bomb, timeout=60) == "EXECUTOR_ERROR"
    assert "process limit" in limited.system_logs(bomb), limited.system_logs(bomb)
    assert limited.wait(other, timeout=180) == "COMPLETE"
    assert leftover_processes(bomb) == [] and _sleepers() == 0
    assert limited.get("/health").status_code == 200


def test_without_limits_the_same_steps_take_what_they_like(unlimited: Server) -> None:
    import time

    assert unlimited.get("/service-info").json()["tags"]["run_memory_limit"] == "0"
    hog = unlimited.submit_cwl(("hog.cwl", HOG), {})
    assert unlimited.wait(hog, timeout=180) == "COMPLETE"  # 2 GiB, beyond the 700M limit
    bomb = unlimited.submit_cwl(("bomb.cwl", BOMB), {})
    most = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and most <= PROCESS_LIMIT:
        most = max(most, _sleepers())
        time.sleep(0.5)
    unlimited.post(f"/runs/{bomb}/cancel")
    assert unlimited.wait(bomb, timeout=120) == "CANCELED"
    assert most > PROCESS_LIMIT, f"only {most} processes without a limit"


UIDS = range(231000, 231100)


@pytest.fixture(scope="module")
def rlimited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No cgroups asked for: each run a uid of its own from run_uids, held by rlimits. Tools
    on the host (Podman's shared image store belongs to run_user)."""
    env = {
        **container_env(None),
        "WES_GATEWAY_RUN_MEMORY_LIMIT": "2G",
        "WES_GATEWAY_RUN_MAX_PROCESSES": str(PROCESS_LIMIT),
        "WES_GATEWAY_RUN_LIMITS": "rlimit",
        "WES_GATEWAY_RUN_UIDS": f"{UIDS.start}-{UIDS.stop - 1}",
    }
    with running_server(tmp_path_factory.mktemp("rlimits"), env) as server:
        yield server


def _uid_of(server: Server, run_id: str) -> int:
    return (server.data_dir / "runs" / run_id / "outputs").stat().st_uid


def test_where_there_are_no_cgroups_a_uid_of_its_own_and_rlimits_hold_each_run(rlimited: Server) -> None:
    hog = rlimited.submit_cwl(("hog.cwl", HOG), {})  # 2 GiB and more, in one process, under 2G
    bomb = rlimited.submit_cwl(("bomb.cwl", BOMB), {})
    other = rlimited.submit_cwl(("echo.cwl", ECHO), {})
    assert rlimited.wait(bomb, timeout=60) == "EXECUTOR_ERROR"  # before its sleepers (90 s) are done
    # RLIMIT_NPROC: the shell could fork no more (the supervisor ends a run that stays at it).
    assert "Cannot fork" in rlimited.get(f"/runs/{bomb}/logs/stderr").text
    assert rlimited.wait(hog, timeout=180) == "EXECUTOR_ERROR"
    assert rlimited.wait(other, timeout=180) == "COMPLETE"
    assert _sleepers() == 0
    uids = {_uid_of(rlimited, run_id) for run_id in (hog, bomb, other)}
    assert _uid_of(rlimited, hog) != _uid_of(rlimited, bomb) and uids <= set(UIDS), uids
    assert rlimited.get("/health").status_code == 200


def test_run_uids_and_a_shared_image_store_are_refused_together(tmp_path: Path) -> None:
    """Measured: a run of its own uid cannot map the shared store's layers (they belong to
    run_user), so every container step would fail; the service refuses to start instead."""
    env = {
        "WES_GATEWAY_CONTAINER_ENGINE": "podman",
        "WES_GATEWAY_IMAGE_STORE": str(tmp_path / "store"),
        "WES_GATEWAY_RUN_UIDS": "231300-231399",
    }
    with pytest.raises(RuntimeError, match="run_uids cannot share image_store"):
        start_server(tmp_path / "data", env)
