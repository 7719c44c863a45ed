"""Real containers: CWL DockerRequirement and WDL runtime.docker run in rootless Podman inside
the run sandbox, from the tests' read-only image store (scripts/build-images).

The stand-in images carry /etc/wes-gateway-image, which no host has: a step that reads it ran
in the image, not on the host.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import (
    Server,
    cmdline,
    container_env,
    lasting_processes,
    leader_group,
    pid_gone,
    start_server,
    stop_server,
    wait_for_tool,
)

MARKER = "/etc/wes-gateway-image"
IN_IMAGE = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: docker.io/debian:stable-slim}
baseCommand: [cat, /etc/wes-gateway-image]
inputs: []
outputs:
  out: {type: stdout}
stdout: out.txt
"""
SLEEPER = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: docker.io/debian:stable-slim}
baseCommand: [sleep]
inputs:
  seconds: {type: int, inputBinding: {position: 1}}
outputs: []
"""
MISSING = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: quay.io/nobody/no-such-image:1.0}
baseCommand: ["true"]
inputs: []
outputs: []
"""
UNREACHABLE = "127.0.0.1:1/nobody/unreachable:1"
WDL = """version 1.0
task marker {
  command <<< cat /etc/wes-gateway-image >>>
  runtime { docker: "docker.io/library/python:3-slim" }
  output { String text = read_string(stdout()) }
}
workflow inimage {
  call marker
  output { String text = marker.text }
}
"""


@pytest.fixture(scope="module")
def podman_server(tmp_path_factory: pytest.TempPathFactory, image_store: Path) -> Iterator[Server]:
    # No test-only singularity stand-in on any PATH: WDL tasks must go through Podman.
    env = container_env(image_store)
    assert "WES_GATEWAY_EXTRA_PATH" not in env
    # A registry the service may pull from: on loopback, where nothing listens.
    env["WES_GATEWAY_ALLOWED_REGISTRIES"] = "127.0.0.1:1"
    server = start_server(tmp_path_factory.mktemp("podman"), env)
    yield server
    stop_server(server)


def cwl(server: Server, name: str, text: str, params: dict[str, object] | None = None) -> str:
    return server.submit_cwl((name, text), params or {})


def test_cwl_docker_requirement_runs_in_the_image(podman_server: Server, image_store: Path) -> None:
    assert not Path(MARKER).exists()  # the host has no such file: only the image does
    run_id = cwl(podman_server, "in_image.cwl", IN_IMAGE)
    assert podman_server.wait(run_id) == "COMPLETE", podman_server.get(f"/runs/{run_id}").text
    run_log = podman_server.get(f"/runs/{run_id}").json()
    assert Path(run_log["outputs"]["out"]["path"]).read_text().startswith("wes-gateway stand-in image")
    [task] = podman_server.get(f"/runs/{run_id}/tasks").json()["task_logs"]
    lines = dict(line.split(": ", 1) for line in task["system_logs"])
    assert lines["container_image"] == "docker.io/debian:stable-slim"
    listing = json.loads((image_store / "overlay-images" / "images.json").read_text())
    [entry] = [e for e in listing if "docker.io/library/debian:stable-slim" in e["names"]]
    assert lines["container_image_digest"] == entry["digest"]
    assert lines["container_image_id"] == f"sha256:{entry['id']}"
    # The RO-Crate names the image the step ran in, with its digest.
    crate_zip = requests.get(f"{podman_server.api}/runs/{run_id}/ro-crate", timeout=60)
    assert crate_zip.status_code == 200
    with zipfile.ZipFile(io.BytesIO(crate_zip.content)) as archive:
        crate = json.loads(archive.read("ro-crate-metadata.json"))
    graph = {item["@id"]: item for item in crate["@graph"]}
    [image] = [item for item in graph.values() if item.get("@type") == "ContainerImage"]
    assert (image["registry"], image["name"], image["tag"]) == ("docker.io", "debian", "stable-slim")
    assert image["sha256"] == entry["digest"].removeprefix("sha256:")
    [step] = [item for item in graph.values() if item.get("containerImage")]
    assert step["containerImage"] == {"@id": image["@id"]}
    info = podman_server.get("/service-info").json()["tags"]
    assert info["container_engine"] == "podman"


def test_wdl_runtime_docker_runs_in_the_image(podman_server: Server) -> None:
    run_id = podman_server.submit_ok(
        {"inimage.wdl": WDL.encode()},
        workflow_url="inimage.wdl",
        workflow_type="WDL",
        workflow_type_version="1.0",
        workflow_params={},
    )
    assert podman_server.wait(run_id, timeout=300) == "COMPLETE", podman_server.get(f"/runs/{run_id}").text
    outputs = podman_server.get(f"/runs/{run_id}").json()["outputs"]
    assert outputs["inimage.text"].startswith("wes-gateway stand-in image")
    [task] = podman_server.get(f"/runs/{run_id}/tasks").json()["task_logs"]
    assert "container_image: docker.io/library/python:3-slim" in task["system_logs"]


def test_a_missing_image_is_an_executor_error_naming_it(podman_server: Server) -> None:
    run_id = cwl(podman_server, "missing.cwl", MISSING)
    assert podman_server.wait(run_id) == "EXECUTOR_ERROR"
    system_logs = podman_server.get(f"/runs/{run_id}").json()["run_log"]["system_logs"]
    named = [line for line in system_logs if "quay.io/nobody/no-such-image:1.0" in line]
    assert named and "quay.io" in named[0] and "allowed: 127.0.0.1:1" in named[0], system_logs


def test_an_image_from_an_allowed_registry_is_pulled_and_its_failure_named(podman_server: Server) -> None:
    run_id = cwl(podman_server, "unreachable.cwl", MISSING.replace("quay.io/nobody/no-such-image:1.0", UNREACHABLE))
    assert podman_server.wait(run_id) == "EXECUTOR_ERROR"
    system_logs = podman_server.get(f"/runs/{run_id}").json()["run_log"]["system_logs"]
    # The service itself tried the registry (not the run's Podman, which has no policy to pull
    # with): the cause is that nothing listens there. tests/e2e/test_registry.py has a real one.
    named = [line for line in system_logs if f"{UNREACHABLE} could not be resolved at 127.0.0.1:1" in line]
    assert named and "nothing answers at the registry's address (connection refused)" in named[0], system_logs


def test_cancel_leaves_no_container_process(podman_server: Server) -> None:
    run_id = cwl(podman_server, "sleeper.cwl", SLEEPER, {"seconds": 600})
    tool, groups = wait_for_tool(run_id, b"sleep\x00600", podman_server.data_dir)
    assert b"conmon" in _ancestry(tool), "the step is not in a container"
    podman_server.post(f"/runs/{run_id}/cancel")
    assert podman_server.wait(run_id, timeout=90) == "CANCELED"
    left = lasting_processes(run_id, groups)
    assert left == [], [(pid, cmdline(pid)[:200]) for pid in left]
    assert _gone_within(tool, 10), "the container's process outlived the cancel"


def test_killing_the_leader_leaves_no_container_process(podman_server: Server) -> None:
    run_id = cwl(podman_server, "sleeper.cwl", SLEEPER, {"seconds": 600})
    tool, _ = wait_for_tool(run_id, b"sleep\x00600", podman_server.data_dir)
    [launcher] = leader_group(podman_server.data_dir, run_id)
    os.killpg(launcher, signal.SIGKILL)
    assert _gone_within(tool, 15), "the container's process outlived its killed leader"
    assert podman_server.wait(run_id, timeout=120) == "SYSTEM_ERROR"


def test_containers_do_not_widen_the_sandbox(tmp_path: Path, image_store: Path) -> None:
    from test_sandbox import probe_with_containers, refused

    report = probe_with_containers(tmp_path, container_env(image_store))
    assert len(report) >= 4
    assert {name: outcome for name, outcome in report.items() if not refused(outcome)} == {}


def test_without_the_sandbox_a_container_reaches_the_service(tmp_path: Path, image_store: Path) -> None:
    # The same attempts with the protection off: the engine then runs as the service itself.
    from test_sandbox import probe_with_containers

    env = {**container_env(image_store), "WES_GATEWAY_RUN_SANDBOX": "none", "WES_GATEWAY_RUN_USER": ""}
    report = probe_with_containers(tmp_path, env)
    assert report["container_database"].startswith("ok:"), report


def _ancestry(pid: int) -> bytes:
    from wes_gateway.host.procs import parent_pid

    names = b""
    for _ in range(12):
        pid = parent_pid(pid) or 0
        if pid <= 1:
            break
        names += cmdline(pid)[:80] + b"|"
    return names


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return True
        time.sleep(0.2)
    return pid_gone(pid)


# A step without a container (the host's network, the run's `docker` first on PATH) tries the
# forms that fetch or load an image; each call's exit status and stderr are reported.
PROBE_PY = r"""
import ast, json, os, re, shutil, subprocess
os.makedirs("ctx", exist_ok=True)
with open("ctx/Containerfile", "w") as containerfile:
    containerfile.write("FROM quay.io/nobody/base:1\nRUN true\n")
with open("x.tar", "wb") as tar:
    tar.write(b"not a tar: the shim must refuse before anything reads it")
with open("accept.json", "w") as policy:
    policy.write('{"default": [{"type": "insecureAcceptAnything"}]}')
with open("pod.yaml", "w") as pod:
    pod.write("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: quay.io/x/y:1}]\n")
CALLS = CALLS_PLACEHOLDER
shim = open(shutil.which("docker")).read()
config = json.loads(ast.literal_eval(re.search(r"^CONFIG: .*json\.loads\((.*)\)$", shim, re.M).group(1)))
run_env = {**os.environ, **config["env"]}
report = {}
for name, argv in CALLS.items():
    env = os.environ
    if argv[0] == "podman":
        argv = [config["podman"], *argv[1:]]
        env = run_env
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        report[name] = {"code": done.returncode, "stdout": done.stdout[-300:], "stderr": done.stderr[-700:]}
    except subprocess.TimeoutExpired:
        report[name] = {"code": None, "stdout": "", "stderr": "timed out"}
print(json.dumps(report))
"""

NOT_ALLOWED = "is not one it may pull from"
# name: (the call, what the refusal names)
REFUSED = {
    "image pull --signature-policy": (
        ["docker", "image", "pull", "--signature-policy", "/dev/null", "quay.io/x/y:1"],
        "--signature-policy",
    ),
    "pull --signature-policy=, allowed registry": (
        ["docker", "pull", "--signature-policy=accept.json", "127.0.0.1:1/x/y:1"],
        "--signature-policy",
    ),
    "pull --tls-verify=false, allowed registry": (
        ["docker", "pull", "--tls-verify=false", "127.0.0.1:1/x/y:1"],
        "--tls-verify=false",
    ),
    "global option before image pull": (["docker", "--log-level=error", "image", "pull", "quay.io/x/y:1"], NOT_ALLOWED),
    "pull, an option after the image": (
        ["docker", "pull", "quay.io/x/y:1", "--quiet"],
        "container image quay.io/x/y:1 is not",
    ),
    "pull of two images": (["docker", "pull", "127.0.0.1:1/x/y:1", "quay.io/x/y:1"], NOT_ALLOWED),
    "pull from an archive": (["docker", "pull", "docker-archive:x.tar"], "docker-archive"),
    "load": (["docker", "load", "-i", "x.tar"], "loads an image"),
    "image load": (["docker", "image", "load", "--input=x.tar"], "loads an image"),
    "import": (["docker", "import", "x.tar", "mine:1"], "loads an image"),
    "image import from a URL": (["docker", "image", "import", "http://127.0.0.1:1/x.tar"], "loads an image"),
    "build": (["docker", "build", "-t", "mine:1", "ctx"], "builds an image"),
    "buildx build": (["docker", "buildx", "build", "ctx"], "builds an image"),
    "image build": (["docker", "image", "build", "-f", "ctx/Containerfile", "ctx"], "builds an image"),
    "run --pull=always of a stored image": (
        ["docker", "run", "--rm", "--pull=always", "docker.io/debian:stable-slim", "true"],
        "--pull=always",
    ),
    "run --pull newer": (["docker", "run", "--rm", "--pull", "newer", "debian:stable-slim", "true"], "--pull=newer"),
    "run of an image not present": (["docker", "run", "--rm", "some.registry/img:1", "true"], NOT_ALLOWED),
    "run -it -e with an image not present": (
        ["docker", "run", "-it", "-eA=1", "--net=none", "quay.io/x/y:1", "sh"],
        NOT_ALLOWED,
    ),
    "container create of an image not present": (["docker", "container", "create", "quay.io/x/y:1"], NOT_ALLOWED),
    "create with a global option after it": (
        ["docker", "create", "--log-level", "error", "quay.io/x/y:1"],
        NOT_ALLOWED,
    ),
    "run from an archive": (["docker", "run", "--rm", "docker-archive:x.tar", "true"], "docker-archive"),
    "run --signature-policy": (
        ["docker", "run", "--rm", "--signature-policy", "accept.json", "debian:stable-slim", "true"],
        "--signature-policy",
    ),
    "another Podman service": (["docker", "--url", "tcp://127.0.0.1:1", "pull", "quay.io/x/y:1"], "another Podman"),
    "registries.conf of its own": (
        ["docker", "--registries-conf", "x.tar", "pull", "127.0.0.1:1/x/y:1"],
        "registry configuration",
    ),
    "manifest inspect": (["docker", "manifest", "inspect", "quay.io/x/y:1"], "manifest"),
    "push": (["docker", "push", "debian:stable-slim", "127.0.0.1:1/x/y:1"], "publishes"),
    "kube play": (["docker", "kube", "play", "pod.yaml"], "kube play"),
    "login": (["docker", "login", "-u", "a", "-p", "b", "127.0.0.1:1"], "registry credentials are the service's"),
    "search": (["docker", "search", "quay.io/x"], "asks registries directly"),
    "image trust": (["docker", "image", "trust", "set", "-t", "accept", "default"], "image trust"),
}
# Forms that fetch nothing, or only from an allowed registry, go on to Podman.
ALLOWED = {
    "images": ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
    "run of a stored image": ["docker", "run", "--rm", "debian:stable-slim", "cat", MARKER],
    "run, global option and --entrypoint": [
        "docker",
        "--log-level=error",
        "run",
        "--rm",
        "-e",
        "X=in-image",
        "--entrypoint",
        "/bin/sh",
        "debian:stable-slim",
        "-c",
        "echo $X",
    ],
    "pull from an allowed registry": ["docker", "image", "pull", "127.0.0.1:1/x/y:1"],
    "run of an image an allowed registry has": ["docker", "run", "--rm", "127.0.0.1:1/x/y:1", "true"],
    # Podman by its own path, with the run's configuration: it pulls nothing without a policy
    # (Podman 4.3 reads none from the run's configuration directory, and the sandbox has no
    # /etc/containers/policy.json), and from anywhere with the step's own (docs/containers.md says so).
    "podman directly": ["podman", "pull", "127.0.0.2:1/x/y:1"],
    "podman directly, its own policy": ["podman", "pull", "--signature-policy", "accept.json", "127.0.0.2:1/x/y:1"],
}


def test_a_step_cannot_fetch_or_load_an_image_through_the_shim(podman_server: Server) -> None:
    calls = {name: argv for name, (argv, _) in REFUSED.items()} | ALLOWED
    script = PROBE_PY.replace("CALLS_PLACEHOLDER", repr(calls))
    run_id = podman_server.submit_script(script)
    assert podman_server.wait(run_id, timeout=600) == "COMPLETE", podman_server.system_logs(run_id)
    report = podman_server.report(run_id)
    wrong = {}
    for name, (_, rule) in REFUSED.items():
        outcome = report[name]
        # Refused by the shim ("wes-gateway: refused ..."), or by the service it asks ("wes-gateway: container image ...").
        if not (outcome["code"] == 125 and "wes-gateway: " in outcome["stderr"] and rule in outcome["stderr"]):
            wrong[name] = outcome
    assert wrong == {}, json.dumps(wrong, indent=1)
    assert not any("wes-gateway: refused" in report[name]["stderr"] for name in ALLOWED), report
    assert report["images"]["code"] == 0 and "debian:stable-slim" in report["images"]["stdout"], report["images"]
    assert report["run of a stored image"]["stdout"].startswith("wes-gateway stand-in image"), report
    assert report["run, global option and --entrypoint"]["stdout"] == "in-image\n", report
    for name in ("pull from an allowed registry", "run of an image an allowed registry has"):
        assert report[name]["code"] != 0 and "connection refused" in report[name]["stderr"], report[name]
    direct = report["podman directly"]
    assert direct["code"] != 0 and "connection refused" not in direct["stderr"], direct
    assert "connection refused" in report["podman directly, its own policy"]["stderr"], report
