"""A restarted run cannot reach outside itself through links it planted in its own directory.

A run's user owns its directory and can put a symbolic link where its ``tmp`` (or ``work``,
``outputs``, ``home``, ``job-logs``, container state) was. The service, as root, binds, creates
in and hands over those directories when it starts the run again after a restart: had it
followed the links, the run's second life would have had another run's directory, a host
directory or the shared image store as its own. Each attacker run here plants one link and
waits; the service is stopped and the leaders killed (an operator restart, a reboot); the
next service must touch nothing the links name, end each attacker run EXECUTOR_ERROR with the
reason, and delete them without following anything either.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest
import requests
from conftest import (
    Server,
    kill_all_leaders,
    lasting_processes,
    leader_group,
    leftover_processes,
    run_groups,
    start_server,
    stop_server,
    wait_until,
)

D = Path(__file__).parent.parent / "data"

PLANT_CWL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: sh
inputs:
  script: {type: File, inputBinding: {position: 1}}
  name: {type: string, inputBinding: {position: 2}}
  target: {type: string, inputBinding: {position: 3}}
outputs: []
"""

PLANT_SH = """name=$1; target=$2
root=$PWD
while [ "$root" != / ] && [ ! -e "$root/params.json" ]; do root=$(dirname "$root"); done
if [ -L "$root/$name" ]; then
  # A second life through the link: write into whatever it names.
  echo pwned > "$root/$name/pwned-by-restart"
  echo pwned > /tmp/pwned-by-restart
  exit 0
fi
[ -e "$root/$name" ] && mv "$root/$name" "$root/$name.moved"
ln -s "$target" "$root/$name"
sleep 600
"""

FAST = {
    "WES_GATEWAY_LEASE_SECONDS": "4",
    "WES_GATEWAY_POLL_INTERVAL": "0.2",
    "WES_GATEWAY_MAX_CONCURRENT_RUNS": "8",
}


def snapshot(top: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """Every name below ``top`` with its type and mode, owner, size and modification time,
    read without following links."""
    found: dict[str, tuple[int, int, int, int, int]] = {}
    for directory, dirnames, filenames in os.walk(top):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            found[os.path.relpath(path, top)] = (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns)
    return found


def state_after(server: Server, run_id: str, timeout: float) -> str:
    """The run's final state, or the state it is still in after ``timeout`` seconds."""
    try:
        return server.wait(run_id, timeout=timeout)
    except AssertionError:
        return str(server.get(f"/runs/{run_id}/status").json()["state"])


def submit_plant(server: Server, name: str, target: Path) -> str:
    return server.submit_ok(
        {"plant.cwl": PLANT_CWL.encode(), "plant.sh": PLANT_SH.encode()},
        workflow_url="plant.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"script": {"class": "File", "location": "plant.sh"}, "name": name, "target": str(target)},
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the run user and the sandbox's binds need root")
def test_a_restarted_run_follows_none_of_the_links_it_planted(tmp_path: Path, engine_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    host = tmp_path / "host"
    host.mkdir()
    (host / "precious.txt").write_text("the host's\n")
    store = Path(engine_env["WES_GATEWAY_IMAGE_STORE"]) if "WES_GATEWAY_IMAGE_STORE" in engine_env else None
    first = start_server(data, {**FAST, **engine_env})
    try:
        victim = first.submit_cwl(D / "echo.cwl", {"message": "the victim's"})
        assert first.wait(victim) == "COMPLETE"
        victim_dir = data / "runs" / victim
        cases = {
            "tmp": victim_dir,
            "work": host,
            "outputs": victim_dir / "outputs",
            "home": store or host,
            "job-logs": host,
        }
        if store is not None:
            cases["containers"] = store
            cases["tmp/.podman"] = store / "overlay"
        targets = {victim_dir, host, *([store] if store else [])}
        before = {target: snapshot(target) for target in targets}
        attackers = {name: submit_plant(first, name, target) for name, target in cases.items()}
        for name, run_id in attackers.items():
            link = data / "runs" / run_id / name

            def planted(link: Path = link, run_id: str = run_id) -> bool:
                state = first.get(f"/runs/{run_id}/status").json()["state"]
                assert state in ("QUEUED", "INITIALIZING", "RUNNING"), (state, first.system_logs(run_id))
                return link.is_symlink()

            wait_until(planted, 180, f"run {run_id} to plant {name}")
        groups = {run_id: leader_group(data, run_id) for run_id in attackers.values()}
    finally:
        stop_server(first)  # an operator's restart: the leaders live on
    # Then they die too, as in a reboot: the launcher first (its sandbox's processes die with it),
    # so that Toil does not retry the step meanwhile.
    for group in groups.values():
        for pid in group:
            os.killpg(pid, signal.SIGKILL)
    for run_id, group in groups.items():
        for pid in leftover_processes(run_id, run_groups(run_id, group) | group):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not lasting_processes(run_id, group), run_id
    second = start_server(data, {**FAST, **engine_env})
    try:
        ended = {name: state_after(second, run_id, 120) for name, run_id in attackers.items()}
        for target in targets:
            changed = sorted(set(snapshot(target).items()) ^ set(before[target].items()))[:5]
            assert not changed, f"{target} changed: {changed}"
        for name, run_id in attackers.items():
            logs = second.system_logs(run_id)
            assert ended[name] == "EXECUTOR_ERROR" and f"replaced its own {name}" in logs, (name, ended[name], logs)
            assert not (data / "runs" / run_id / name).is_symlink()  # taken away, not followed
        # Deleting the runs follows nothing either.
        for run_id in attackers.values():
            assert requests.delete(f"{second.api}/runs/{run_id}", timeout=30).status_code == 200
        for target in targets:
            assert snapshot(target) == before[target], f"{target} changed by a delete"
        assert second.get(f"/runs/{victim}").json()["state"] == "COMPLETE"
        assert (victim_dir / "outputs").is_dir()
    finally:
        stop_server(second)
        kill_all_leaders(data)
