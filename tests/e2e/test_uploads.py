"""POST /runs bodies in bounded memory, over real HTTP to a real Gunicorn worker."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import Server, peak_rss, start_server, stop_server, worker_pid

D = Path(__file__).parent.parent / "data"
MIB = 1024 * 1024
FIELDS = {
    "workflow_url": "echo.cwl",
    "workflow_type": "CWL",
    "workflow_type_version": "v1.2",
    "workflow_params": json.dumps({"message": "upload"}),
}


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # One web worker, so that its peak RSS is the upload's.
    server = start_server(
        tmp_path_factory.mktemp("uploads"),
        {"WES_GATEWAY_MAX_ATTACHMENT_BYTES": str(400 * MIB), "WES_GATEWAY_MAX_ATTACHMENT_FILE_BYTES": str(400 * MIB)},
        workers=1,
    )
    yield server
    stop_server(server)


def raw_post(server: Server, headers: dict[str, str], body_chunks: Iterator[bytes] | None = None) -> tuple[int, int]:
    """Send a POST /runs head (and chunks, as long as the server reads them); returns the
    status and how many chunks went out before the server answered."""
    host, port = server.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /ga4gh/wes/v1/runs HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode())
    sent = 0
    for chunk in body_chunks or iter(()):
        if select.select([sock], [], [], 0)[0]:
            break  # the server has answered
        try:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:
            break
        sent += 1
    response = b""
    deadline = time.monotonic() + 30
    while b"\r\n" not in response and time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        response += data
    sock.close()
    return int(response.split(b" ", 2)[1]), sent


def test_oversize_content_length_is_refused_before_the_body(one_worker: Server) -> None:
    began = time.monotonic()
    status, _ = raw_post(
        one_worker, {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": str(10 * 1024**3)}
    )
    assert status == 413
    assert time.monotonic() - began < 1.0


def test_chunked_body_is_stopped_at_the_limit(one_worker: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'--xyz\r\nContent-Disposition: form-data; name="workflow_attachment"; filename="big.bin"\r\n\r\n'
        for _ in range(2000):  # 2,000 MiB offered; the limit is 400 MiB
            yield b"\0" * MIB

    status, sent = raw_post(
        one_worker, {"Content-Type": "multipart/form-data; boundary=xyz", "Transfer-Encoding": "chunked"}, chunks()
    )
    assert status == 413
    assert sent < 1000  # the server stopped reading, rather than taking it all in
    assert not list((one_worker.data_dir / "runs" / ".staging").glob("upload-*"))


def test_a_large_upload_streams_to_disk(one_worker: Server) -> None:
    requests.get(one_worker.api + "/service-info", timeout=10)  # warm the worker
    pid = worker_pid(one_worker)
    before = peak_rss(pid)
    size = 300 * MIB

    def body() -> Iterator[bytes]:
        boundary = b"xyz"
        for name, value in FIELDS.items():
            yield b'--xyz\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
            yield value.encode() + b"\r\n"
        yield b'--xyz\r\nContent-Disposition: form-data; name="workflow_attachment"; filename="echo.cwl"\r\n\r\n'
        yield (D / "echo.cwl").read_bytes() + b"\r\n"
        yield b'--xyz\r\nContent-Disposition: form-data; name="workflow_attachment"; filename="data/big.bin"\r\n\r\n'
        for i in range(size // MIB):
            yield bytes([i % 256]) * MIB
        yield b"\r\n--" + boundary + b"--\r\n"

    response = requests.post(
        one_worker.api + "/runs",
        data=body(),
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    stored = one_worker.data_dir / "runs" / run_id / "attachments" / "data" / "big.bin"
    assert stored.stat().st_size == size
    with stored.open("rb") as handle:
        handle.seek(5 * MIB)
        assert handle.read(1) == bytes([5])
    growth = peak_rss(pid) - before
    assert growth <= 64 * MIB, f"worker peak RSS grew by {growth / MIB:.0f} MiB"
    assert one_worker.wait(run_id) == "COMPLETE"
    assert not list((one_worker.data_dir / "runs" / ".staging").glob("upload-*"))


def test_what_a_dead_worker_left_in_staging_is_swept_at_start(tmp_path: Path) -> None:
    # A web worker killed mid-upload leaves its spool; one killed mid-submission, a staged run
    # and the run directory's link to it. A live upload, recently touched, stays.
    data = tmp_path / "data"
    staging = data / "runs" / ".staging"
    staging.mkdir(parents=True)
    dead_upload, dead_run, live_upload = staging / "upload-dead", staging / "deadrun", staging / "upload-live"
    for folder in (dead_upload, dead_run, live_upload):
        (folder / "part").mkdir(parents=True)
        (folder / "part" / "chunk").write_bytes(b"x" * 1024)
    (data / "runs" / "deadrun").symlink_to(dead_run, target_is_directory=True)
    old = time.time() - 7 * 3600
    for folder in (dead_upload, dead_run):
        for path in (folder / "part" / "chunk", folder / "part", folder):
            os.utime(path, (old, old))
    server = start_server(data)
    try:
        deadline = time.monotonic() + 30
        while (dead_upload.exists() or dead_run.exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop_server(server)
    assert not dead_upload.exists() and not dead_run.exists()
    assert not (data / "runs" / "deadrun").is_symlink()
    assert (live_upload / "part" / "chunk").exists()
