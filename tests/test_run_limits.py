"""Per-run memory and process limits (#26 item 9): a memory hog and a fork bomb each end
their own run, while the service and a second run carry on; with the limits off, the same
steps take what they like (the protection shown off).

Real Gunicorn, Toil, bwrap and the host's cgroups; the tools run on the host (no image)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Server, leftover_processes, running_server

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

    from wes_gateway import limits
    from wes_gateway.config import load_settings

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
