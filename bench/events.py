#!/usr/bin/env python3
"""bench/events: GET /runs/{id}/status p50/p99 on one web worker, first alone and then while
200 Server-Sent Events streams (GET /runs/{id}/events) stay open on the same worker, each on
a run that keeps RUNNING. Target: p99 with the streams <= 2x p99 without. Baseline: the same
worker without streams, in the same run."""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from common import QUIET, cores, fmt, host_port, load, start_server, stop_server
from seed import seed_runs

from wes_gateway import store


def open_streams(host: str, port: int, run_ids: list[str]) -> list[socket.socket]:
    streams = []
    for run_id in run_ids:
        sock = socket.create_connection((host, port), timeout=30)
        sock.sendall(
            f"GET /ga4gh/wes/v1/runs/{run_id}/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        streams.append(sock)
    for sock in streams:  # every stream answered its headers: it is open and being served
        head = sock.recv(4096)
        assert b" 200 " in head.split(b"\r\n", 1)[0], head[:200]
    return streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        ids = seed_runs(data, 1000)
        store.open_database(f"sqlite:///{data.resolve() / 'wes.sqlite3'}")
        # Runs that never end (no supervisor): their streams stay open for the whole bench.
        store.Run.update(state=store.RUNNING).where(store.Run.run_id.in_(ids[: args.streams])).execute()
        store.database.close()
        server = start_server(data, QUIET, workers=1)
        host, port = host_port(server)
        status = lambda i: f"/ga4gh/wes/v1/runs/{ids[i % len(ids)]}/status"  # noqa: E731
        try:
            alone = load(host, port, status, args.seconds, args.connections)
            began = time.perf_counter()
            streams = open_streams(host, port, ids[: args.streams])
            opened = time.perf_counter() - began
            try:
                beside = load(host, port, status, args.seconds, args.connections)
                still_open = sum(1 for sock in streams if sock.fileno() >= 0)
            finally:
                for sock in streams:
                    sock.close()
        finally:
            stop_server(server)
    print(f"cores={cores()} one worker, {args.connections} connections, {args.seconds:g}s each")
    print(f"status alone:               {fmt(alone)}")
    print(f"status beside {args.streams} streams: {fmt(beside)}  ({still_open} streams open, opened in {opened:.1f}s)")
    print(f"ratio p99 beside/alone = {beside['p99'] / alone['p99']:.2f}  (target <= 2)")


if __name__ == "__main__":
    main()
