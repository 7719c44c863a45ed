"""The shared image store cannot be changed by the run user, in a sandbox or outside one.

The store belongs to root on disk; runs see it through a read-only idmapped view in which
root's files are the run user's (what single-uid rootless Podman needs). A step that goes
after the store through that view, and a process of the run user outside any sandbox (as a
cluster job would be), both fail; a store whose files belong to the run user is refused.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from pathlib import Path

import pytest
from conftest import running_server, start_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the run user and the store's owner need root")

# Finds the store as the run's own Podman is told to (its storage.conf), then tries to change
# an image file, plant a record and swap a layer's directory.
ATTACK_PY = r"""
import glob, json, os, re
root = os.getcwd()
while root != "/" and not os.path.exists(os.path.join(root, "params.json")):
    root = os.path.dirname(root)
conf = open(os.path.join(root, "containers/config/containers/storage.conf")).read()
store = re.search(r'additionalimagestores = \["([^"]+)"\]', conf).group(1)
report = {"store": store}
target = glob.glob(store + "/overlay/*/diff/etc/wes-gateway-image")[0]
def attempt(name, action):
    try:
        action()
        report[name] = "ok"
    except OSError as exc:
        report[name] = f"denied: {exc.strerror}"
attempt("append", lambda: open(target, "a").write("changed by a run\n"))
attempt("chmod", lambda: os.chmod(target, 0o666))
attempt("plant", lambda: open(store + "/overlay-images/planted", "w").write("x"))
attempt("rename", lambda: os.rename(os.path.dirname(target), os.path.dirname(target) + ".old"))
print(json.dumps(report))
"""

IN_IMAGE_CWL = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: "debian:stable-slim"}
baseCommand: [cat, /etc/wes-gateway-image]
inputs: []
outputs:
  out: {type: stdout}
stdout: out.txt
"""


def image_file(store: Path) -> Path:
    return next(store.glob("overlay/*/diff/etc/wes-gateway-image"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_step_cannot_change_the_image_store(tmp_path: Path, engine_env: dict[str, str]) -> None:
    if "WES_GATEWAY_IMAGE_STORE" not in engine_env:
        pytest.skip("no image store here (Podman and the tests' images)")
    store = Path(engine_env["WES_GATEWAY_IMAGE_STORE"])
    before = digest(image_file(store))
    with running_server(tmp_path / "data", engine_env) as server:
        run_id = server.submit_script(ATTACK_PY)
        assert server.wait(run_id) == "COMPLETE", server.system_logs(run_id)
        report = server.report(run_id)
        assert report.pop("store") != str(store)  # the view, not the store itself
        assert all(outcome.startswith("denied") for outcome in report.values()), report
        assert digest(image_file(store)) == before
        # The next run's container sees the image as it was built.
        reader = server.submit_cwl(("in_image.cwl", IN_IMAGE_CWL), {})
        assert server.wait(reader) == "COMPLETE", server.system_logs(reader)
        out = server.get(f"/runs/{reader}").json()["outputs"]["out"]["path"]
        assert Path(out).read_text().startswith("wes-gateway stand-in image")


def test_the_run_user_outside_a_sandbox_cannot_change_the_store(engine_env: dict[str, str]) -> None:
    if "WES_GATEWAY_IMAGE_STORE" not in engine_env:
        pytest.skip("no image store here (Podman and the tests' images)")
    target = image_file(Path(engine_env["WES_GATEWAY_IMAGE_STORE"]))
    nobody = pwd.getpwnam("nobody")
    done = subprocess.run(
        ["/bin/sh", "-c", 'echo "changed by a job" >> "$0"', str(target)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "Permission denied" in done.stderr, done.stderr


def test_a_store_the_run_user_owns_is_refused(tmp_path: Path) -> None:
    # The protection off: a store built the old way (layers owned by the run user).
    layer = tmp_path / "store" / "overlay" / "0123" / "diff"
    layer.mkdir(parents=True)
    (layer / "etc").mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(layer / "etc", nobody.pw_uid, nobody.pw_gid)
    env = {"WES_GATEWAY_CONTAINER_ENGINE": "podman", "WES_GATEWAY_IMAGE_STORE": str(tmp_path / "store")}
    with pytest.raises(RuntimeError, match="holds files that are not root's"):
        start_server(tmp_path / "data", env)
