#!/usr/bin/env python3
"""bench/trs_drs: a one-step CWL workflow named by TRS id, with one DRS input, both served on
loopback: seconds from POST /runs to COMPLETE through the gateway (which fetches the workflow
from TRS and the input from DRS at submission), against `toil-cwl-runner` run directly on the
same TRS id (TOIL_TRS_ROOT pointing at the loopback TRS server, a fresh Toil workflow cache each
time, as the gateway fetches afresh each run) with the input as a local file. Prints both
medians and the ratio gateway/direct (target <= 0.6).

Standalone: it starts its own Gunicorn (harness/) and imports nothing of the tests' pytest
fixtures; the DRS server is tests/e2e/drs_server.py (harness and the standard library only), the
TRS server is here because Toil's client wants Dockstore's layout (ROOT/api/ga4gh/trs/v2) and a
checksum on every file."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from common import ROOT, Server, spread, start_server, stop_server

sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # its DRS server: harness and the standard library only

from drs_server import BYTES, drs_server  # noqa: E402

from harness.loopback import Reply, Request, serve  # noqa: E402

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
FILES = {"cat.cwl": CAT_CWL}


def _files(query: str) -> Reply:
    """The version's CWL files: listed, each with its checksum, or (format=zip) in one archive."""
    if query == "format=zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for path, body in FILES.items():
                archive.writestr(path, body)
        return Reply(200, buffer.getvalue(), "application/zip")
    listing = [
        {
            "path": path,
            "file_type": "PRIMARY_DESCRIPTOR",
            "checksum": {"type": "sha-256", "checksum": hashlib.sha256(body).hexdigest()},
        }
        for path, body in FILES.items()
    ]
    return Reply(200, json.dumps(listing).encode())


def _answer(request: Request) -> Reply:
    parsed = urlparse(request.path)
    prefix = TRS_PATH + "/tools/"
    parts = [unquote(p) for p in parsed.path[len(prefix) :].split("/")] if parsed.path.startswith(prefix) else []
    if not parts or parts[0] != TOOL_ID:
        return Reply(404, b'{"message": "not found"}')
    if len(parts) == 1:
        versions = [{"name": VERSION, "id": VERSION, "descriptor_type": ["CWL"]}]
        return Reply(200, json.dumps({"id": TOOL_ID, "versions": versions}).encode())
    if len(parts) < 3 or parts[1:3] != ["versions", VERSION]:
        return Reply(404, b'{"message": "no such version"}')
    if len(parts) == 3:
        return Reply(200, json.dumps({"name": VERSION, "descriptor_type": ["CWL"]}).encode())
    if parts[3:] == ["CWL", "files"]:
        return _files(parsed.query)
    if parts[3:5] == ["PLAIN_CWL", "descriptor"]:
        relative = "/".join(parts[5:]) or "cat.cwl"
        if relative in FILES:
            return Reply(200, FILES[relative], "text/plain")
    return Reply(404, b'{"message": "not found"}')


@contextlib.contextmanager
def trs_server() -> Iterator[str]:
    """A TRS v2 server with one tool, one version, one CWL file; yields its host base URL."""
    with serve(_answer) as netloc:
        yield f"http://{netloc}"


def through_gateway(server: Server, drs_uri: str, expected: bytes) -> float:
    start = time.perf_counter()
    response = requests.post(
        server.api + "/runs",
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
    state = server.wait(run_id, timeout=600, interval=0.05)
    elapsed = time.perf_counter() - start
    assert state == "COMPLETE", (state, server.get(f"/runs/{run_id}").text)
    out = server.get(f"/runs/{run_id}").json()["outputs"]["out"]
    assert server.get(f"/runs/{run_id}/outputs/{out['basename']}").content == expected
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
        # The gateway's own defaults (no test settings) but for these, its access log off.
        env = {
            "WES_GATEWAY_ACCESS_LOG": "/dev/null",
            "WES_GATEWAY_RUN_DISK_LIMIT": "8G",
            "WES_GATEWAY_TRS_ROOTS": trs_root + TRS_PATH,
            "WES_GATEWAY_DRS_RESOLVERS": f"{registry.netloc}={registry.root}",
            "WES_GATEWAY_ALLOWED_URL_PREFIXES": f"https://,{registry.data}",
            "WES_GATEWAY_CONTAINER_ENGINE": "none",
        }
        drs_uri = f"drs://{registry.netloc}/obj1"
        server = start_server(tmp / "gw", env, workers=None, defaults={})
        try:
            through_gateway(server, drs_uri, data)  # warm-up: forkserver and cwltool in the web worker
            via_gateway = [through_gateway(server, drs_uri, data) for _ in range(args.repeat)]
        finally:
            stop_server(server)
        direct(tmp, -1, trs_root, data)  # warm-up: the page cache holds Toil and cwltool, as for the gateway
        direct_times = [direct(tmp, i, trs_root, data) for i in range(args.repeat)]
    g, d = statistics.median(via_gateway), statistics.median(direct_times)

    print(f"cores={os.cpu_count()} repeat={args.repeat} (one warm-up run on each side, not counted)")
    print(f"gateway (TRS id + DRS input) POST->COMPLETE median {g:.2f}s  {spread(via_gateway)}")
    print(f"direct toil-cwl-runner (TRS id + local file) median {d:.2f}s  {spread(direct_times)}")
    print(f"ratio gateway/direct = {g / d:.2f}  (target <= 0.6)")


if __name__ == "__main__":
    main()
