#!/usr/bin/env python3
"""bench/trs_drs: a one-step CWL workflow named by TRS id, with one DRS input, both served on
loopback: seconds from POST /runs to COMPLETE through the gateway (which fetches the workflow
from TRS and the input from DRS at submission), against `toil-cwl-runner` run directly on the
same TRS id (TOIL_TRS_ROOT pointing at the loopback TRS server, a fresh Toil workflow cache each
time, as the gateway fetches afresh each run) with the input as a local file. Prints both
medians and the ratio gateway/direct (target <= 0.6).

Standalone: it starts its own Gunicorn and imports nothing of the tests' pytest fixtures; the
DRS server is tests/drs_server.py (standard library only), the TRS server is here because
Toil's client wants Dockstore's layout (ROOT/api/ga4gh/trs/v2) and a checksum on every file."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from drs_server import BYTES, drs_server  # noqa: E402  (standard library only)

API = "/ga4gh/wes/v1"
TRS_PATH = "/api/ga4gh/trs/v2"  # Dockstore's layout, which TOIL_TRS_ROOT assumes
TOOL_ID = "#workflow/bench.example.org/cat"
VERSION = "v1"
CAT_CWL = b"""cwlVersion: v1.2
class: CommandLineTool
baseCommand: cat
inputs:
  one: {type: File, inputBinding: {position: 1}}
outputs:
  out: {type: stdout}
stdout: out.txt
"""
TERMINAL = ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED")


@contextlib.contextmanager
def trs_server() -> Iterator[str]:
    """A TRS v2 server with one tool, one version, one CWL file; yields its host base URL."""
    files = {"cat.cwl": CAT_CWL}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            prefix = TRS_PATH + "/tools/"
            parts = (
                [unquote(p) for p in parsed.path[len(prefix) :].split("/")] if parsed.path.startswith(prefix) else []
            )
            if not parts or parts[0] != TOOL_ID:
                return self.send(404, b'{"message": "not found"}')
            if len(parts) == 1:
                versions = [{"name": VERSION, "id": VERSION, "descriptor_type": ["CWL"]}]
                return self.send(200, json.dumps({"id": TOOL_ID, "versions": versions}).encode())
            if len(parts) < 3 or parts[1:3] != ["versions", VERSION]:
                return self.send(404, b'{"message": "no such version"}')
            if len(parts) == 3:
                return self.send(200, json.dumps({"name": VERSION, "descriptor_type": ["CWL"]}).encode())
            if parts[3:] == ["CWL", "files"]:
                if parsed.query == "format=zip":
                    buffer = io.BytesIO()
                    with zipfile.ZipFile(buffer, "w") as archive:
                        for path, body in files.items():
                            archive.writestr(path, body)
                    return self.send(200, buffer.getvalue(), "application/zip")
                listing = [
                    {
                        "path": path,
                        "file_type": "PRIMARY_DESCRIPTOR",
                        "checksum": {"type": "sha-256", "checksum": hashlib.sha256(body).hexdigest()},
                    }
                    for path, body in files.items()
                ]
                return self.send(200, json.dumps(listing).encode())
            if parts[3:5] == ["PLAIN_CWL", "descriptor"]:
                relative = "/".join(parts[5:]) or "cat.cwl"
                if relative in files:
                    return self.send(200, files[relative], "text/plain")
            return self.send(404, b'{"message": "not found"}')

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gateway(data_dir: Path, extra_env: dict[str, str]) -> Iterator[str]:
    """Gunicorn with the gateway on a free loopback port; yields the WES API base URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WES_GATEWAY_")}
    env.update(
        {
            "WES_GATEWAY_DATA_DIR": str(data_dir),
            "WES_GATEWAY_BIND": f"127.0.0.1:{port}",
            "WES_GATEWAY_ACCESS_LOG": "/dev/null",
            "WES_GATEWAY_RUN_DISK_LIMIT": "8G",
            **extra_env,
        }
    )
    log = (data_dir / "gunicorn.log").open("ab")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}{API}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (data_dir / "gunicorn.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"gunicorn did not start:\n{tail}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(api + "/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        yield api
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log.close()
        # The runs' filesystems (wes_gateway.host.volumes) stay mounted after the server stops.
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(f"{data_dir}/"):
                subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def through_gateway(api: str, drs_uri: str, expected: bytes) -> float:
    start = time.perf_counter()
    response = requests.post(
        api + "/runs",
        timeout=60,
        files=[
            ("workflow_url", (None, f"{TOOL_ID}:{VERSION}")),
            ("workflow_type", (None, "CWL")),
            ("workflow_type_version", (None, "v1.2")),
            ("workflow_params", (None, json.dumps({"one": {"class": "File", "location": drs_uri}}))),
        ],
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    while True:
        state = requests.get(f"{api}/runs/{run_id}/status", timeout=10).json()["state"]
        if state in TERMINAL:
            elapsed = time.perf_counter() - start
            assert state == "COMPLETE", (state, requests.get(f"{api}/runs/{run_id}", timeout=10).text)
            break
        time.sleep(0.05)
    out = requests.get(f"{api}/runs/{run_id}", timeout=10).json()["outputs"]["out"]
    assert requests.get(f"{api}/runs/{run_id}/outputs/{out['basename']}", timeout=10).content == expected
    return elapsed


def direct(tmp: Path, i: int, trs_root: str, data: bytes) -> float:
    """toil-cwl-runner on the TRS id, the input a local file; a fresh HOME (and so a cold Toil
    workflow cache) each run, as the gateway fetches the workflow afresh for each."""
    run = tmp / f"direct{i}"
    run.mkdir()
    (run / "one.txt").write_bytes(data)
    (run / "job.json").write_text(json.dumps({"one": {"class": "File", "path": str(run / "one.txt")}}))
    bin_dir = Path(sys.executable).parent
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(run),
        "TOIL_HISTORY": "False",
        "LANG": "C.UTF-8",
        "TOIL_TRS_ROOT": trs_root,
    }
    argv = [
        str(bin_dir / "toil-cwl-runner"),
        f"{TOOL_ID}:{VERSION}",
        str(run / "job.json"),
        "--no-container",
        "--jobStore",
        f"file:{run}/js",
        "--outdir",
        str(run / "out"),
        "--workDir",
        str(run),
        "--disableProgress",
    ]
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    assert (run / "out" / "out.txt").read_bytes() == data
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = BYTES["obj1"]
    with tempfile.TemporaryDirectory() as tmp_text, trs_server() as trs_root, drs_server() as registry:
        tmp = Path(tmp_text)
        env = {
            "WES_GATEWAY_TRS_ROOTS": trs_root + TRS_PATH,
            "WES_GATEWAY_DRS_RESOLVERS": f"{registry.netloc}={registry.root}",
            "WES_GATEWAY_ALLOWED_URL_PREFIXES": f"https://,{registry.data}",
            "WES_GATEWAY_CONTAINER_ENGINE": "none",
        }
        drs_uri = f"drs://{registry.netloc}/obj1"
        with gateway(tmp / "gw", env) as api:
            through_gateway(api, drs_uri, data)  # warm-up: forkserver and cwltool in the web worker
            via_gateway = [through_gateway(api, drs_uri, data) for _ in range(args.repeat)]
        direct(tmp, -1, trs_root, data)  # warm-up: the page cache holds Toil and cwltool, as for the gateway
        direct_times = [direct(tmp, i, trs_root, data) for i in range(args.repeat)]
    g, d = statistics.median(via_gateway), statistics.median(direct_times)

    def spread(values: list[float]) -> str:
        return f"min {min(values):.2f} max {max(values):.2f} (all: {', '.join(f'{x:.2f}' for x in values)})"

    print(f"cores={os.cpu_count()} repeat={args.repeat} (one warm-up run on each side, not counted)")
    print(f"gateway (TRS id + DRS input) POST->COMPLETE median {g:.2f}s  {spread(via_gateway)}")
    print(f"direct toil-cwl-runner (TRS id + local file) median {d:.2f}s  {spread(direct_times)}")
    print(f"ratio gateway/direct = {g / d:.2f}  (target <= 0.6)")


if __name__ == "__main__":
    main()
