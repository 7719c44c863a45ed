"""A real gateway for a test or a benchmark: Gunicorn with the supervisor on a free loopback
port, over a data directory of its own, and the clean-up of what its runs leave."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
API = "/ga4gh/wes/v1"
TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}

# What the tests' gateways run with unless a test says otherwise: short polls and grace so
# that a test waits little, response validation on, small limits for a small machine.
TEST_ENV: Mapping[str, str] = {
    "WES_GATEWAY_RESPONSE_VALIDATION": "true",
    "WES_GATEWAY_POLL_INTERVAL": "0.2",
    "WES_GATEWAY_CANCEL_GRACE_SECONDS": "3",
    "WES_GATEWAY_MAX_CONCURRENT_RUNS": "4",
    "WES_GATEWAY_RUN_MAX_CORES": "2",
    # Toil gives a CWL job 3 GiB of disk by default; four such runs fit in the books of a small disk.
    "WES_GATEWAY_RUN_DISK_LIMIT": "8G",
}

# A step that runs a Python script (an attachment) on the host's python3, inside the run's
# sandbox, and whose standard output is its report.
SCRIPT_CWL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: python3
inputs:
  script: {type: File, inputBinding: {position: 1}}
outputs:
  report: {type: stdout}
stdout: report.json
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.3) -> None:
    """Until ``predicate()`` holds, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Server:
    base: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.base + API

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.api + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.api + path, timeout=120, **kwargs)

    def submit(self, attachments: dict[str, bytes | Path] | None = None, **fields: Any) -> requests.Response:
        data = {key: (json.dumps(value) if isinstance(value, (dict, list)) else value) for key, value in fields.items()}
        files = []
        for name, content in (attachments or {}).items():
            body = content.read_bytes() if isinstance(content, Path) else content
            files.append(("workflow_attachment", (name, body)))
        return self.post("/runs", data=data, files=files or None)

    def submit_ok(self, attachments: dict[str, bytes | Path] | None = None, **fields: Any) -> str:
        response = self.submit(attachments, **fields)
        assert response.status_code == 200, response.text
        return str(response.json()["run_id"])

    def submit_cwl(self, tool: Path | tuple[str, str], params: dict[str, Any]) -> str:
        """A CWL v1.2 tool, a file or (name, text), as its only attachment; the run id."""
        name, body = (tool.name, tool.read_bytes()) if isinstance(tool, Path) else (tool[0], tool[1].encode())
        return self.submit_ok(
            {name: body}, workflow_url=name, workflow_type="CWL", workflow_type_version="v1.2", workflow_params=params
        )

    def submit_script(self, script: str) -> str:
        """A Python script run as a CWL step with no container (SCRIPT_CWL); the run id. What it
        prints is its ``report`` output (``report``)."""
        return self.submit_ok(
            {"script.cwl": SCRIPT_CWL.encode(), "script.py": script.encode()},
            workflow_url="script.cwl",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"script": {"class": "File", "location": "script.py"}},
        )

    def report(self, run_id: str) -> Any:
        """The JSON a SCRIPT_CWL step printed."""
        return json.loads(Path(self.get(f"/runs/{run_id}").json()["outputs"]["report"]["path"]).read_text())

    def wait(self, run_id: str, states: set[str] = TERMINAL, timeout: float = 180, interval: float = 0.3) -> str:
        """The run's state once it is one of ``states``; an ended run also settled out of its
        filesystem (which follows the record of its end), so that what a test then reads of
        its directory is not swapped beneath it."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.get(f"/runs/{run_id}/status").json()["state"]
            if state in states:
                if state in TERMINAL:
                    self.wait_settled(run_id)
                return str(state)
            time.sleep(interval)
        raise AssertionError(f"run {run_id} still {state} after {timeout}s\n{self.log_tail()}")

    def wait_settled(self, run_id: str, timeout: float = 60) -> None:
        """Until the ended run's filesystem image is gone (at once where runs have none)."""
        image = self.data_dir / "runs" / ".volumes" / f"{run_id}.img"
        wait_until(lambda: not image.exists(), timeout, f"run {run_id} to be settled", interval=0.05)

    def system_logs(self, run_id: str) -> str:
        """The run's ``system_logs``, one line each."""
        return "\n".join(self.get(f"/runs/{run_id}").json()["run_log"]["system_logs"] or [])

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""


def start_server(
    data_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    workers: int | None = 2,
    app: str | None = None,
    worker_class: str | None = None,
    unix_socket: Path | None = None,
    defaults: Mapping[str, str] = TEST_ENV,
    ready_within: float = 60,
) -> Server:
    """Gunicorn on a free loopback port (and, if asked, a unix socket as well), once /health
    answers. ``defaults`` and ``workers`` come first and ``extra_env`` over them; with
    ``defaults={}, workers=None`` the gateway runs with its own defaults, as `make run` does."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WES_GATEWAY_")}
    env["WES_GATEWAY_DATA_DIR"] = str(data_dir)
    env["WES_GATEWAY_BIND"] = (f"unix:{unix_socket}," if unix_socket else "") + f"127.0.0.1:{port}"
    if workers is not None:
        env["WES_GATEWAY_WORKERS"] = str(workers)
    env.update(defaults)
    if app:
        env["WES_GATEWAY_APP"] = app
    if worker_class:
        env["WES_GATEWAY_WORKER_CLASS"] = worker_class
    env.update(extra_env or {})
    log_path = data_dir / "gunicorn.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(base=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process, log_path=log_path, env=env)
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited early:\n{server.log_tail()}")
        try:
            if requests.get(server.api + "/health", timeout=5).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"gunicorn did not answer:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)


@contextlib.contextmanager
def running_server(data_dir: Path, extra_env: Mapping[str, str]) -> Iterator[Server]:
    """A gateway for a test module: stopped, and its leaders killed, at the end."""
    server = start_server(data_dir, extra_env)
    try:
        yield server
    finally:
        stop_server(server)
        kill_all_leaders(server.data_dir)


def kill_all_leaders(*roots: Path) -> None:
    """Kill what is left of the runs kept under ``roots`` (data or shared directories): only
    those, so that another test session on the same machine keeps its own runs."""
    needle = b"WES_GATEWAY_RUN_ID="
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as handle:
                    environ = handle.read()
            except OSError:
                continue
            if needle not in environ:
                continue
            run_id = environ.split(needle, 1)[1].split(b"\0", 1)[0].decode(errors="replace")
            if not run_id or not any((Path(root) / "runs" / run_id).exists() for root in roots):
                continue
            try:
                os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
            except OSError:
                pass


def unmount_runs(under: Path) -> None:
    """Unmount every filesystem mounted below ``under`` (a gateway's data directory, say): the
    runs' filesystems (wes_gateway.host.volumes) stay mounted after their server stops."""
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in mounted:
        if point.startswith(f"{under}/"):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def worker_pid(server: Server) -> int:
    """A web worker of the server (the first found; start it with workers=1 to be sure)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == server.process.pid and b"supervise" not in command:
            return int(entry.name)
    raise AssertionError("no web worker")


def peak_rss(pid: int) -> int:
    """Peak resident memory of a process so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# The tests' images, built by scripts/build-images once and kept between test sessions.
IMAGE_STORE = Path(os.environ.get("WES_GATEWAY_TEST_IMAGE_STORE", "/var/cache/wes-gateway/test-images"))


@functools.cache
def images_unavailable() -> str:
    """Why the tests' image store cannot be built here, or '' once it is there (asked once per
    process: the tests' engine_env and image_store fixtures, and the benchmarks, all ask)."""
    if os.geteuid() != 0:
        return "building the test images (debootstrap, podman as the run user) needs root"
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (scripts/system-deps)"
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-images"), str(IMAGE_STORE)], capture_output=True, text=True, timeout=900
    )
    if built.returncode != 0:
        return f"scripts/build-images failed: {built.stderr[-2000:]}"
    return ""


def container_env(store: Path | None) -> dict[str, str]:
    """Real Podman with the tests' images where they can be had; else no engine, and WDL
    through the test-only singularity stand-in (tests/e2e/bin), which runs task commands on the host."""
    if store is not None:
        return {"WES_GATEWAY_CONTAINER_ENGINE": "podman", "WES_GATEWAY_IMAGE_STORE": str(store)}
    return {"WES_GATEWAY_CONTAINER_ENGINE": "none", "WES_GATEWAY_EXTRA_PATH": str(ROOT / "tests" / "e2e" / "bin")}
