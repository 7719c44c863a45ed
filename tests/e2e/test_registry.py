"""Images from a real registry (Debian's docker-registry on loopback, TLS from a test CA, htpasswd
auth: harness/registry.py), pulled once per host by the service into its own store, never by
a run. The gateway's store starts empty: what a step runs came from the registry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, container_env, free_port, start_server, stop_server, wait_until

from harness import registry as loopback

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the service's pulls and the run user need root")

TOOL = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: "IMAGE"}
baseCommand: [cat, FILE]
inputs: []
outputs:
  out: {type: stdout}
stdout: out.txt
"""
WDL = """version 1.0
task only {
  command <<< cat FILE >>>
  runtime { docker: "IMAGE" }
  output { String text = read_string(stdout()) }
}
workflow fromregistry {
  call only
  output { String text = only.text }
}
"""


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, image_store: Path) -> Iterator[loopback.Registry]:
    why = loopback.unavailable()
    if why:
        pytest.skip(why)
    yield from loopback.running(tmp_path_factory.mktemp("registry"), image_store)


@pytest.fixture(scope="module")
def hung() -> Iterator[str]:
    """A registry address that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        listener.settimeout(0.5)
        while not stopping.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stopping.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture(scope="module")
def down() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def pulling(tmp_path_factory: pytest.TempPathFactory, reg: loopback.Registry, hung: str, down: str) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("pulled-images")
    os.chmod(store, 0o755)
    env = container_env(store)
    env.update(
        {
            "WES_GATEWAY_ALLOWED_REGISTRIES": ",".join([reg.host, reg.wrong_credentials_host, hung, down]),
            "WES_GATEWAY_REGISTRY_CERTS_DIR": str(reg.certs_dir),
            "WES_GATEWAY_REGISTRY_AUTH_FILE": str(reg.auth_file),
            "WES_GATEWAY_REGISTRY_TIMEOUT": "8",
        }
    )
    server = start_server(tmp_path_factory.mktemp("wes-registry"), env)
    yield server
    stop_server(server)


def _cwl(server: Server, image: str, path: str = loopback.ONLY_FILE) -> str:
    return server.submit_cwl(("tool.cwl", TOOL.replace("IMAGE", image).replace("FILE", path)), {})


def _task_lines(server: Server, run_id: str) -> dict[str, str]:
    [task] = server.get(f"/runs/{run_id}/tasks").json()["task_logs"]
    return dict(line.split(": ", 1) for line in task["system_logs"] if ": " in line)


def test_cwl_image_only_in_the_registry_runs_and_records_its_digest(pulling: Server, reg: loopback.Registry) -> None:
    image = reg.ref(loopback.ONLY_HERE)
    run_id = _cwl(pulling, image)
    assert pulling.wait(run_id, timeout=300) == "COMPLETE", pulling.system_logs(run_id)
    out = pulling.get(f"/runs/{run_id}").json()["outputs"]["out"]["path"]
    assert Path(out).read_text() == loopback.ONLY_TEXT
    lines = _task_lines(pulling, run_id)
    assert lines["container_image"] == image
    assert lines["container_image_digest"] == reg.digest(loopback.ONLY_HERE)


def test_wdl_image_only_in_the_registry_runs(pulling: Server, reg: loopback.Registry) -> None:
    image = reg.ref(loopback.ONLY_HERE)
    run_id = pulling.submit_ok(
        {"r.wdl": WDL.replace("IMAGE", image).replace("FILE", loopback.ONLY_FILE).encode()},
        workflow_url="r.wdl",
        workflow_type="WDL",
        workflow_type_version="1.0",
        workflow_params={},
    )
    assert pulling.wait(run_id, timeout=300) == "COMPLETE", pulling.system_logs(run_id)
    assert pulling.get(f"/runs/{run_id}").json()["outputs"]["fromregistry.text"] == loopback.ONLY_TEXT.strip()
    lines = _task_lines(pulling, run_id)
    assert lines["container_image"] == image
    assert lines["container_image_digest"] == reg.digest(loopback.ONLY_HERE)


def test_by_digest_and_twice_the_layers_are_fetched_once(pulling: Server, reg: loopback.Registry) -> None:
    name = next(iter(loopback.COPIED))
    digest = reg.digest(name)
    before = reg.blob_fetches()
    timings = []
    for image in (reg.ref(name), f"{reg.ref(name).rsplit(':', 1)[0]}@{digest}"):
        started = time.monotonic()
        run_id = _cwl(pulling, image, "/etc/wes-gateway-image")
        assert pulling.wait(run_id, timeout=300) == "COMPLETE", pulling.system_logs(run_id)
        timings.append(time.monotonic() - started)
        assert _task_lines(pulling, run_id)["container_image_digest"] == digest
    fetched = {blob: count - before.get(blob, 0) for blob, count in reg.blob_fetches().items()}
    fetched = {blob: count for blob, count in fetched.items() if count}
    assert fetched and set(fetched.values()) == {1}, fetched
    print(f"first run (pull) {timings[0]:.1f} s, second run (stored) {timings[1]:.1f} s")


def _fails_with(server: Server, image: str, *causes: str, within: float = 180) -> None:
    started = time.monotonic()
    run_id = _cwl(server, image)
    assert server.wait(run_id, timeout=within) == "EXECUTOR_ERROR", server.system_logs(run_id)
    logs = server.get(f"/runs/{run_id}").json()["run_log"]["system_logs"]
    named = [line for line in logs if image in line]
    assert named and all(cause in named[0] for cause in causes), logs
    assert server.get("/health").status_code == 200
    print(f"{image}: {time.monotonic() - started:.1f} s")


def test_a_registry_not_allowed_is_named_with_the_setting(pulling: Server) -> None:
    _fails_with(
        pulling, "quay.io/nobody/not-allowed:1", "registry quay.io is not one it may pull from", "allowed_registries"
    )


def test_an_unknown_tag_is_named(pulling: Server, reg: loopback.Registry) -> None:
    _fails_with(pulling, reg.ref("tests/registry-only:no-such-tag"), "manifest unknown")


def test_a_registry_that_is_down_is_named(pulling: Server, down: str) -> None:
    _fails_with(pulling, f"{down}/tests/x:1", "connection refused")


def test_wrong_credentials_are_named(pulling: Server, reg: loopback.Registry) -> None:
    _fails_with(pulling, f"{reg.wrong_credentials_host}/{loopback.ONLY_HERE}", "unauthorized")


def test_a_hung_registry_fails_in_bounded_time_and_others_pull(
    pulling: Server, reg: loopback.Registry, hung: str
) -> None:
    stalled = _cwl(pulling, f"{hung}/tests/x:1")
    other = _cwl(pulling, reg.ref(loopback.ONLY_HERE))
    assert pulling.wait(other, timeout=120) == "COMPLETE", pulling.system_logs(other)
    assert pulling.wait(stalled, timeout=120) == "EXECUTOR_ERROR"
    assert "did not answer in time" in pulling.system_logs(stalled)


def test_a_run_cannot_pull_itself_or_change_the_store(pulling: Server, reg: loopback.Registry) -> None:
    script = PROBE.replace("REF", reg.ref(loopback.ONLY_HERE))
    run_id = pulling.submit_script(script)
    assert pulling.wait(run_id, timeout=300) == "COMPLETE", pulling.system_logs(run_id)
    report = pulling.report(run_id)
    assert report["podman pull"]["code"] != 0, report
    assert report["write"].startswith("denied"), report


# A step with no container: pull with the run's own Podman (credentials and CA given by hand),
# and write into the store it is shown.
PROBE = r"""
import glob, json, os, re, shutil, subprocess
shim = open(shutil.which("docker")).read()
import ast
config = json.loads(ast.literal_eval(re.search(r"^CONFIG: .*json\.loads\((.*)\)$", shim, re.M).group(1)))
env = {**os.environ, **config["env"]}
done = subprocess.run([config["podman"], "pull", "--tls-verify=false", "REF"], env=env, capture_output=True,
                      text=True, timeout=120)
report = {"podman pull": {"code": done.returncode, "stderr": done.stderr[-500:]}}
root = os.getcwd()
while root != "/" and not os.path.exists(os.path.join(root, "params.json")):
    root = os.path.dirname(root)
conf = open(os.path.join(root, "containers/config/containers/storage.conf")).read()
store = re.search(r'additionalimagestores = \["([^"]+)"\]', conf).group(1)
try:
    open(store + "/overlay-images/planted", "w").write("x")
    report["write"] = "ok"
except OSError as exc:
    report["write"] = f"denied: {exc.strerror}"
print(json.dumps(report))
"""


def test_a_full_store_is_named(tmp_path: Path, reg: loopback.Registry) -> None:
    store = tmp_path / "images"
    store.mkdir(mode=0o755)
    env = container_env(store)
    env.update(
        {
            "WES_GATEWAY_ALLOWED_REGISTRIES": reg.host,
            "WES_GATEWAY_REGISTRY_CERTS_DIR": str(reg.certs_dir),
            "WES_GATEWAY_REGISTRY_AUTH_FILE": str(reg.auth_file),
            "WES_GATEWAY_IMAGE_STORE_LIMIT": "1M",
        }
    )
    server = start_server(tmp_path / "data", env)
    try:
        _fails_with(server, reg.ref(loopback.ONLY_HERE), "does not fit in the image store", "image_store_limit (1M)")
    finally:
        stop_server(server)


APART = "tests/apart:1"
APART_FILE = "/etc/wes-gateway-apart"
SLEEP = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: "IMAGE"}
baseCommand: [sleep, "300"]
inputs: []
outputs: []
"""


def _pulling_env(reg: loopback.Registry, store: Path, **settings: str) -> dict[str, str]:
    env = container_env(store)
    env.update(
        {
            "WES_GATEWAY_ALLOWED_REGISTRIES": reg.host,
            "WES_GATEWAY_REGISTRY_CERTS_DIR": str(reg.certs_dir),
            "WES_GATEWAY_REGISTRY_AUTH_FILE": str(reg.auth_file),
            **{f"WES_GATEWAY_{name.upper()}": value for name, value in settings.items()},
        }
    )
    return env


def _stored_names(store: Path) -> set[str]:
    listing = store / "overlay-images" / "images.json"
    return {name for image in json.loads(listing.read_text()) for name in image["names"]} if listing.exists() else set()


def test_least_recently_used_images_make_room_but_not_those_an_active_run_uses(
    tmp_path: Path, reg: loopback.Registry, image_store: Path
) -> None:
    loopback.add_apart(reg, image_store, APART, {APART_FILE.lstrip("/"): b"apart\n"})
    held, apart = reg.ref(loopback.ONLY_HERE), reg.ref(APART)
    # Room for either image alone (compressed size x 3, as the service reckons a pull), not both:
    # the first image's unpacked layers (167 MB of stand-in) are more than the 50 MB left over.
    limit = max(reg.layer_bytes(loopback.ONLY_HERE), reg.layer_bytes(APART)) * 3 + 50 * 2**20
    store = tmp_path / "images"
    store.mkdir(mode=0o755)
    server = start_server(tmp_path / "data", _pulling_env(reg, store, image_store_limit=f"{limit // 2**20}M"))
    try:
        sleeping = server.submit_cwl(("sleep.cwl", SLEEP.replace("IMAGE", held)), {})
        wait_until(lambda: f"{held}" in _stored_names(store), 180, "the first image pulled")
        wait_until(
            lambda: any(t.get("start_time") for t in server.get(f"/runs/{sleeping}/tasks").json()["task_logs"]),
            120,
            "the sleeping step running",
        )
        # On: the only image that could make room is used by an active run, so it stays.
        _fails_with(server, apart, "does not fit in the image store", "used by an active run")
        assert held in _stored_names(store)
        server.post(f"/runs/{sleeping}/cancel")
        assert server.wait(sleeping, timeout=120) == "CANCELED"
        # Off (the run ended): it is evicted, least recently used, and the new image runs.
        run_id = _cwl(server, apart, APART_FILE)
        assert server.wait(run_id, timeout=300) == "COMPLETE", server.system_logs(run_id)
        assert server.get(f"/runs/{run_id}").json()["outputs"]["out"]["size"] == len(b"apart\n")
        assert held not in _stored_names(store) and apart in _stored_names(store)
        assert "least recently used" in server.log_path.read_text()
    finally:
        stop_server(server)


def test_a_pull_that_would_break_disk_reserve_is_named(tmp_path: Path, reg: loopback.Registry) -> None:
    """The store on a small filesystem of its own (a 400 MB loop-mounted ext4): with the default
    disk_reserve (2G) a pull would leave too little; with 16M it fits and the run completes."""
    image_file, store = tmp_path / "store.ext4", tmp_path / "images"
    with open(image_file, "wb") as sparse:
        sparse.truncate(400 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image_file)], check=True, capture_output=True, timeout=60)
    store.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image_file), str(store)], check=True, capture_output=True, timeout=60)
    try:
        os.chmod(store, 0o755)
        for reserve, ends in (("2G", "EXECUTOR_ERROR"), ("16M", "COMPLETE")):
            server = start_server(tmp_path / f"data-{reserve}", _pulling_env(reg, store, disk_reserve=reserve))
            try:
                if ends == "EXECUTOR_ERROR":
                    _fails_with(server, reg.ref(loopback.ONLY_HERE), f"than disk_reserve ({reserve})")
                else:
                    run_id = _cwl(server, reg.ref(loopback.ONLY_HERE))
                    assert server.wait(run_id, timeout=300) == "COMPLETE", server.system_logs(run_id)
            finally:
                stop_server(server)
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False, capture_output=True, timeout=60)
