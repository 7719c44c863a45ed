"""What a run sees of /sys (shown whole for its container engine, which must be able to mount
a sysfs of its own): no run's id, whether in a cgroup's name or in a loop device's backing
file, since a run id is what a run needs to aim at another."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import running_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and run filesystems need root")

LOOK_PY = r"""
import glob, json, os
groups = []
for top in glob.glob("/sys/fs/cgroup/*"):
    for directory, dirnames, _ in os.walk(top):
        groups += [name for name in dirnames if name.startswith("run-")]
        if directory.count("/") > 12:
            dirnames[:] = []
backing = []
for path in glob.glob("/sys/block/*/loop/backing_file") + glob.glob("/sys/devices/virtual/block/*/loop/backing_file"):
    try:
        backing.append(open(path).read().strip())
    except OSError:
        pass
print(json.dumps({"groups": sorted(set(groups)), "backing": backing, "sys": os.path.isdir("/sys/fs/cgroup")}))
"""


def test_a_run_sees_no_run_id_in_sys(tmp_path: Path, engine_env: dict[str, str]) -> None:
    if engine_env.get("WES_GATEWAY_CONTAINER_ENGINE") != "podman":
        pytest.skip("/sys is shown to runs only for Podman")
    with running_server(tmp_path / "data", engine_env) as server:
        other = server.submit_cwl(Path(__file__).parent.parent / "data" / "echo.cwl", {"message": "the other's"})
        assert server.wait(other) == "COMPLETE"
        run_id = server.submit_script(LOOK_PY)
        assert server.wait(run_id) == "COMPLETE", server.system_logs(run_id)
        report = server.report(run_id)
    assert report["sys"], report
    # The groups are there (the view is not simply empty), under names that give no id away.
    assert report["groups"], report
    shown = json.dumps(report)
    assert other not in shown and run_id not in shown, report
