"""A run's outputs cannot hold the web workers: downloads end with their client, one response
sends at most what the settings allow, the RO-Crate never hashes in a request, a client that
stops reading holds no thread and is dropped, and each user has so many downloads at once.

Each test serves runs whose outputs are sparse (no disk, all zeros), as the attacks on landed
main did."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
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


# Downloads whose clients stop reading: two users download, a third lists their runs.
PROXY_SECRET = "downloads-3c1e"
DOWNLOADERS = ("alice", "bob")
BIG = 1 << 30


def _as(user: str) -> dict[str, str]:
    return {"X-Remote-User": user, "X-WES-Gateway-Proxy-Secret": PROXY_SECRET}


@pytest.fixture(scope="module")
def users_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A data directory with a COMPLETE run for each of alice, bob and carol: alice's and bob's
    outputs a sparse GiB and a small file, and a log."""
    from wes_gateway import store

    data_dir = tmp_path_factory.mktemp("stalls") / "data"
    data_dir.mkdir()
    store.open_database(f"sqlite:///{data_dir / 'wes.sqlite3'}")
    store.upgrade(store.database.obj)
    runs = {
        user: record_run(owner=user, state="COMPLETE", end_time="2026-12-06T00:00:00Z")
        for user in (*DOWNLOADERS, "carol")
    }
    store.database.close()
    for user in DOWNLOADERS:
        outdir = data_dir / "runs" / runs[user] / "outputs"
        outdir.mkdir(parents=True)
        with open(outdir / "big.bin", "wb") as handle:
            handle.truncate(BIG)
        (outdir / "small.txt").write_text("small\n")
        (outdir.parent / "stderr.log").write_text("a leader's log\n")
    yield data_dir, runs


def _auth_server(data_dir: Path, workers: int = 1, **settings: str) -> Server:
    env = {
        "WES_GATEWAY_SUPERVISOR": "off",
        "WES_GATEWAY_AUTH_MODES": "proxy",
        "WES_GATEWAY_AUTH_PROXY_SECRET": PROXY_SECRET,
        **{f"WES_GATEWAY_{k.upper()}": v for k, v in settings.items()},
    }
    return start_server(data_dir, env, workers=workers)


def _stall(server: Server, path: str, user: str, extra: str = "") -> socket.socket:
    """A connection that asks for ``path`` as ``user`` and will read one byte: a small receive
    buffer (set before connecting, so that the window stays small), not blocking."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", int(server.base.rsplit(":", 1)[1])))
    headers = "".join(f"{name}: {value}\r\n" for name, value in _as(user).items())
    sock.sendall(f"GET {API}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}{extra}\r\n".encode())
    sock.setblocking(False)
    return sock


def _first_bytes(socks: list[socket.socket], deadline: float) -> dict[socket.socket, float]:
    """Read one byte from each socket as it comes (until ``deadline``): when each came."""
    import selectors

    came: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(came) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, min(0.5, deadline - time.monotonic()))):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                assert sock.recv(1) == b"H"
                came[sock] = time.monotonic()
                selector.unregister(sock)
    return came


def _closed(sock: socket.socket) -> bool:
    """Whether the server has ended the connection (a FIN or a reset came), read without
    taking any of the bytes waiting (which would be progress): TCP_INFO's state."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1  # TCP_ESTABLISHED


def _download_fds(pid: int, data_dir: Path) -> list[str]:
    """What the worker has open of runs' files and download slots."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith((f"{data_dir}/runs/", f"{data_dir}/downloads/")):
            held.append(target)
    return held


def _timed(call: Callable[[], requests.Response]) -> float:
    """Seconds ``call`` took to answer 200 (a failure or a timeout counts as 10)."""
    started = time.monotonic()
    try:
        ok = call().status_code == 200
    except requests.RequestException:
        ok = False
    return time.monotonic() - started if ok else 10.0


def test_stalled_downloads_hold_no_thread(users_runs: tuple[Path, dict[str, str]]) -> None:
    """200 downloads (alice's and bob's: the file, 8 MiB Ranges of it, the outputs' zip and the
    RO-Crate) that read one byte and stop, on one web worker: /health and carol's GET /runs
    answer within a second throughout, and the server resets each stalled connection after
    send_timeout (3 s) of taking nothing. Before, ten such downloads took the worker's ten WSGI
    threads for as long as they stayed open, and every other request waited behind them."""
    data_dir, runs = users_runs
    timeout = 3.0
    server = _auth_server(data_dir, send_timeout=str(timeout), max_downloads_per_user="150")
    socks: list[socket.socket] = []
    try:
        pid = worker_pid(server)
        what = [
            ("/outputs/big.bin", ""),
            ("/outputs/big.bin", "Range: bytes=0-8388607\r\n"),
            ("/outputs.zip", ""),
            ("/ro-crate", ""),
        ]
        for i in range(200):
            user = DOWNLOADERS[i % 2]
            path, extra = what[(i // 2) % len(what)]
            socks.append(_stall(server, f"/runs/{runs[user]}{path}", user, extra))
        started = time.monotonic()
        came = _first_bytes(socks, started + 10)
        at_once = sum(not _closed(sock) for sock in came)
        print(
            f"{len(came)} of 200 stalled downloads begun in {max(came.values(), default=started) - started:.2f} s, "
            f"{at_once} open at once"
        )

        health: list[float] = []
        listing: list[float] = []
        closed: dict[socket.socket, float] = {}
        deadline = time.monotonic() + timeout + 12
        while len(closed) < len(socks) and time.monotonic() < deadline:
            health.append(_timed(lambda: requests.get(f"{server.api}/health", timeout=10)))
            listing.append(_timed(lambda: requests.get(f"{server.api}/runs", headers=_as("carol"), timeout=10)))
            now = time.monotonic()
            for sock in socks:
                if sock not in closed and _closed(sock):
                    closed[sock] = now
            time.sleep(0.1)
        print(
            f"/health: {len(health)} answers, slowest {max(health) * 1000:.0f} ms; carol's GET /runs: "
            f"slowest {max(listing) * 1000:.0f} ms; {len(closed)} of 200 reset by the server"
        )
        assert max(health) < 1.0 and max(listing) < 1.0, (health, listing)
        assert len(came) == 200, f"only {len(came)} of 200 downloads began"
        assert at_once > 50  # more than the worker's WSGI threads, many times over
        assert len(closed) == 200, f"only {len(closed)} of 200 stalled connections were closed"
        # Dropped for their silence, not sooner (the first byte came before it stalled).
        quiet = sorted(closed[sock] - came[sock] for sock in socks)
        print(f"closed {quiet[0]:.2f} to {quiet[-1]:.2f} s after their first byte")
        assert quiet[0] > timeout - 0.5 and quiet[-1] < timeout + 10, quiet
        for sock in socks:  # what the client sees: the end, or a reset
            try:
                for _ in range(4096):
                    if not sock.recv(1 << 16):
                        break
                else:
                    raise AssertionError("a stalled connection is still sending")
            except ConnectionResetError:
                pass
            except BlockingIOError:
                raise AssertionError("a stalled connection is still open") from None
        # Each download's file and slot are given back.
        for _ in range(50):
            if not (held := _download_fds(pid, data_dir)):
                break
            time.sleep(0.1)
        assert not held, f"the worker still holds {len(held)} files of downloads: {held[:5]}"
        assert server.get(f"/runs/{runs['alice']}/outputs/small.txt", headers=_as("alice")).content == b"small\n"
    finally:
        for sock in socks:
            sock.close()
        stop_server(server)


def test_downloads_per_user_are_limited(users_runs: tuple[Path, dict[str, str]]) -> None:
    """max_downloads_per_user = 2, over two web workers: alice's third download at once is a
    429 with Retry-After (whichever worker answers), bob's and alice's other requests are not,
    and alice's slots come back as soon as her downloads' connections close."""
    data_dir, runs = users_runs
    server = _auth_server(data_dir, workers=2, max_downloads_per_user="2")
    alice = runs["alice"]
    socks: list[socket.socket] = []
    try:
        socks = [_stall(server, f"/runs/{alice}/outputs/big.bin", "alice") for _ in range(2)]
        assert len(_first_bytes(socks, time.monotonic() + 10)) == 2
        for path in ("/outputs/small.txt", "/outputs.zip", "/ro-crate", "/logs/stderr"):
            for _ in range(4):
                refused = server.get(f"/runs/{alice}{path}", headers=_as("alice"))
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["Retry-After"]) > 0
                assert refused.json()["status_code"] == 429 and "max_downloads_per_user" in refused.json()["msg"]
        assert server.get("/runs", headers=_as("alice")).status_code == 200
        assert server.get(f"/runs/{runs['bob']}/outputs/small.txt", headers=_as("bob")).content == b"small\n"
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 5
        while (again := server.get(f"/runs/{alice}/outputs/small.txt", headers=_as("alice"))).status_code == 429:
            assert time.monotonic() < deadline, "alice's slots were not given back"
            time.sleep(0.1)
        assert again.content == b"small\n"
    finally:
        for sock in socks:
            sock.close()
        stop_server(server)
