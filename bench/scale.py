#!/usr/bin/env python3
"""bench/scale: does any read path grow with the store? Seeds 10,000 and then 100,000 runs
(bulk insert), and prints p50/p99 for the first page of /runs, a page 500 pages deep reached
by token, /service-info, /runs/{id}/status and /runs/{id}, first pages filtered by state, tag
and since, and count=true, with the 100k/10k ratio of each (goal: <= 1.2 everywhere; for
count=true also p99 <= 50 ms at 100k)."""

from __future__ import annotations

import argparse
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import QUIET, cores, fmt, host_port, load, start_server, stop_server
from seed import seed_runs

from wes_gateway import store


def measure(count: int, seconds: float, connections: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        ids = seed_runs(data, count)
        db = store.open_database(f"sqlite:///{data.resolve() / 'wes.sqlite3'}")
        newest = store.Run.select(store.Run.id).order_by(store.Run.id.desc()).first().id
        db.close()
        # Page 500 of size 10 starts after the 5,000 newest runs; the token is the keyset cursor.
        deep_token = store.encode_token(newest - 5000 + 1)
        since = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=count - 1000)).strftime("%Y-%m-%dT%H:%M:%SZ")
        rng = random.Random(7)
        sample = [rng.choice(ids) for _ in range(5000)]
        server = start_server(data, QUIET, workers=cores())
        host, port = host_port(server)
        api = "/ga4gh/wes/v1"
        paths = {
            "runs page 1": lambda i: f"{api}/runs?page_size=100",
            "runs page 500": lambda i: f"{api}/runs?page_size=10&page_token={deep_token}",
            "service-info": lambda i: f"{api}/service-info",
            "status": lambda i: f"{api}/runs/{sample[i % len(sample)]}/status",
            "run log": lambda i: f"{api}/runs/{sample[i % len(sample)]}",
            "state filter": lambda i: f"{api}/runs?page_size=50&state=EXECUTOR_ERROR",
            "tag filter": lambda i: f"{api}/runs?page_size=50&tag=project:p{i % 10}",
            # The newest thousand runs: seeded a second apart, the last at count - 1 s.
            "since filter": lambda i: f"{api}/runs?page_size=50&since={since}",
            "count=true": lambda i: f"{api}/runs?page_size=50&state=EXECUTOR_ERROR&count=true",
        }
        try:
            results = {name: load(host, port, path, seconds, connections) for name, path in paths.items()}
            # One client at a time: the request's own latency, not the queue of 8 on 2 cores.
            for name in ("state filter", "tag filter", "since filter", "count=true"):
                results[f"{name}, 1 conn"] = load(host, port, paths[name], seconds, 1)
            return results
        finally:
            stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    small = measure(args.small, args.seconds, args.connections)
    large = measure(args.large, args.seconds, args.connections)
    print(f"cores={cores()} connections={args.connections} seconds={args.seconds}")
    for name in small:
        s, big = small[name], large[name]
        print(f"{name:14s} {args.small:>7d} runs: {fmt(s)}")
        print(f"{name:14s} {args.large:>7d} runs: {fmt(big)}")
        print(
            f"{name:14s} ratio {args.large // 1000}k/{args.small // 1000}k  p50 {big['p50'] / s['p50']:.2f}  "
            f"p99 {big['p99'] / s['p99']:.2f}  (goal <= 1.2; cores={cores()})"
        )
    single = large["count=true, 1 conn"]["p99"]
    print(f"count=true p99 at {args.large // 1000}k, one connection: {single:.1f} ms (goal <= 50 ms)")


if __name__ == "__main__":
    main()
