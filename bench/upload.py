#!/usr/bin/env python3
"""bench/upload: a web worker's peak RSS growth while POST /runs carries 100 MB, 1 GB and 2 GB
of attachments, and the time to the 413 for a Content-Length over the limit. Targets: growth
<= 64 MB whatever the size; the 413 within 1 s. Baseline: the worker's own peak before."""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from common import ROOT, cores, start_server, stop_server

from harness.gateway import peak_rss, worker_pid

MB = 1000 * 1000
ECHO = (ROOT / "tests" / "data" / "echo.cwl").read_bytes()


def body(size: int) -> Iterator[bytes]:
    fields = {
        "workflow_url": "echo.cwl",
        "workflow_type": "CWL",
        "workflow_type_version": "v1.2",
        "workflow_params": json.dumps({"message": "upload"}),
    }
    for name, value in fields.items():
        yield f'--xyz\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    yield b'--xyz\r\nContent-Disposition: form-data; name="workflow_attachment"; filename="echo.cwl"\r\n\r\n'
    yield ECHO + b"\r\n"
    yield b'--xyz\r\nContent-Disposition: form-data; name="workflow_attachment"; filename="big.bin"\r\n\r\n'
    chunk = b"\x5a" * MB
    for _ in range(size // MB):
        yield chunk
    yield b"\r\n--xyz--\r\n"


def time_to_413(server_base: str, length: int) -> float:
    host, port = server_base.removeprefix("http://").split(":")
    began = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /ga4gh/wes/v1/runs HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        status = sock.recv(64).split(b" ", 2)[1]
    assert status == b"413", status
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,2000", help="upload sizes in MB")
    args = parser.parse_args()
    sizes = [int(text) * MB for text in args.sizes.split(",")]
    limit = max(sizes) + 10 * MB
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(
            Path(tmp) / "gw",
            {
                "WES_GATEWAY_SUPERVISOR": "off",
                "WES_GATEWAY_MAX_ATTACHMENT_BYTES": str(limit),
                "WES_GATEWAY_MAX_ATTACHMENT_FILE_BYTES": str(limit),
                "WES_GATEWAY_ACCESS_LOG": "/dev/null",
            },
            workers=1,
        )
        try:
            requests.get(server.api + "/service-info", timeout=10)
            pid = worker_pid(server)
            baseline = peak_rss(pid)
            print(f"cores={cores()} worker peak RSS before: {baseline / MB:.0f} MB")
            for size in sizes:
                began = time.perf_counter()
                response = requests.post(
                    server.api + "/runs",
                    data=body(size),
                    headers={"Content-Type": "multipart/form-data; boundary=xyz"},
                    timeout=900,
                )
                seconds = time.perf_counter() - began
                assert response.status_code == 200, response.text
                growth = peak_rss(pid) - baseline
                print(
                    f"upload {size / MB:>5.0f} MB: {seconds:6.1f} s ({size / MB / seconds:5.0f} MB/s), "
                    f"peak RSS growth {growth / MB:5.1f} MB (target <= 64 MB)"
                )
            waits = sorted(time_to_413(server.base, 10 * limit) for _ in range(5))
            print(f"413 for an oversize Content-Length: median {waits[2] * 1000:.1f} ms (target <= 1000 ms)")
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
