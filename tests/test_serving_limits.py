"""A run's outputs cannot hold the web workers: downloads end with their client, one response
sends at most what the settings allow, and the RO-Crate never hashes in a request.

Each test serves a run whose output is a sparse terabyte (no disk, all zeros), as the attack
on landed main did."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import API, Server, record_run, start_server, stop_server, worker_pid

TERABYTE = 1 << 40


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (USER_HZ 100)


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A data directory with one COMPLETE run whose outputs are a sparse terabyte and a small file."""
    from wes_gateway import store

    data_dir = tmp_path_factory.mktemp("sparse") / "data"
    data_dir.mkdir()
    store.open_database(f"sqlite:///{data_dir / 'wes.sqlite3'}")
    store.upgrade(store.database.obj)
    run_id = record_run(state="COMPLETE", end_time="2026-12-06T00:00:00Z")
    store.database.close()
    outdir = data_dir / "runs" / run_id / "outputs"
    outdir.mkdir(parents=True)
    with open(outdir / "huge.bin", "wb") as handle:
        handle.truncate(TERABYTE)
    (outdir / "small.txt").write_text("small\n")
    yield data_dir, run_id


def _server(data_dir: Path, **settings: str) -> Server:
    env = {"WES_GATEWAY_SUPERVISOR": "off", **{f"WES_GATEWAY_{k.upper()}": v for k, v in settings.items()}}
    return start_server(data_dir, env, workers=1)


def _drop(server: Server, path: str) -> None:
    """Ask for ``path`` on a raw socket, read the first bytes of the body, and hang up."""
    with socket.create_connection(("127.0.0.1", int(server.base.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(f"GET {API}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = b""
        while len(received) < 1 << 20:
            chunk = sock.recv(1 << 16)
            assert chunk, f"{path}: the server closed first: {received[:200]!r}"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received[:200]


def test_dropped_downloads_stop_reading(sparse_run: tuple[Path, str]) -> None:
    """Eight downloads of the terabyte (the file and the zip), each dropped after a megabyte:
    the worker goes idle at once, and answers /health; before, it read on for nobody."""
    data_dir, run_id = sparse_run
    server = _server(data_dir, max_served_file_bytes=str(2 * TERABYTE), max_served_run_bytes=str(2 * TERABYTE))
    try:
        pid = worker_pid(server)
        for _ in range(4):
            _drop(server, f"/runs/{run_id}/outputs/huge.bin")
            _drop(server, f"/runs/{run_id}/outputs.zip")
        time.sleep(1.0)  # a chunk or two in flight may still be read
        before = _cpu_seconds(pid)
        time.sleep(3.0)
        busy = _cpu_seconds(pid) - before
        started = time.monotonic()
        assert server.get("/health").status_code == 200
        answered = time.monotonic() - started
        print(f"worker CPU over 3 s after 8 dropped downloads: {busy:.2f} s; /health in {answered * 1000:.0f} ms")
        assert busy < 0.5, f"the worker spent {busy:.2f} s of CPU in 3 s on downloads nobody reads"
        assert answered < 2.0
    finally:
        stop_server(server)


def test_one_response_sends_at_most_the_caps(sparse_run: tuple[Path, str]) -> None:
    """Defaults: 64 GiB a file, 128 GiB an archive. The terabyte is refused whole (403, an
    ErrorResponse naming the setting), served in ranges, and the zip and crate refused."""
    data_dir, run_id = sparse_run
    server = _server(data_dir)
    try:
        whole = server.get(f"/runs/{run_id}/outputs/huge.bin")
        assert whole.status_code == 403, whole.text
        assert whole.json()["status_code"] == 403 and "max_served_file_bytes" in whole.json()["msg"]
        part = server.get(f"/runs/{run_id}/outputs/huge.bin", headers={"Range": "bytes=1048576-2097151"})
        assert part.status_code == 206 and part.content == bytes(1 << 20)
        beyond = server.get(f"/runs/{run_id}/outputs/huge.bin", headers={"Range": f"bytes=0-{65 << 30}"})
        assert beyond.status_code == 403
        for archive in ("outputs.zip", "ro-crate"):
            refused = server.get(f"/runs/{run_id}/{archive}")
            assert refused.status_code == 403, refused.text
            assert "max_served_run_bytes" in refused.json()["msg"]
        assert server.get(f"/runs/{run_id}/outputs/small.txt").content == b"small\n"
    finally:
        stop_server(server)


def test_the_ro_crate_starts_at_once_and_hashes_nothing(sparse_run: tuple[Path, str]) -> None:
    """With caps that allow it, the terabyte's crate begins within seconds: the request
    hashes nothing (the supervisor hashes outputs as a run completes, within the cap), so a
    file without a recorded sum is listed with its size alone."""
    import json

    data_dir, run_id = sparse_run
    server = _server(data_dir, max_served_file_bytes=str(2 * TERABYTE), max_served_run_bytes=str(2 * TERABYTE))
    try:
        started = time.monotonic()
        head = b""
        with requests.get(f"{server.api}/runs/{run_id}/ro-crate", stream=True, timeout=60) as response:
            assert response.status_code == 200
            for chunk in response.iter_content(1 << 16):
                head += chunk
                if len(head) >= 1 << 18:
                    break
            waited = time.monotonic() - started
        print(f"first {len(head)} bytes of a terabyte's RO-Crate after {waited:.2f} s")
        assert waited < 10
        # The metadata is the zip's first entry, stored as it is: decode it from the head.
        assert head.startswith(b"PK") and b"ro-crate-metadata.json" in head[:100]
        metadata, _end = json.JSONDecoder().raw_decode(head[head.index(b"{") :].decode("utf-8", "replace"))
        huge = next(item for item in metadata["@graph"] if item["@id"] == "outputs/huge.bin")
        assert huge["contentSize"] == TERABYTE and "sha256" not in huge
    finally:
        stop_server(server)
