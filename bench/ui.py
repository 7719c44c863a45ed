#!/usr/bin/env python3
"""bench/ui: the run browser's first page (/ui/) with 100,000 runs in the store, one client
at a time (the server's own time per page), beside GET /runs?page_size=50 of the API on the
same server. Target: the page's p99 <= 200 ms."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import QUIET, cores, fmt, host_port, load, start_server, stop_server
from seed import seed_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        seed_runs(data, args.runs)
        server = start_server(data, QUIET, workers=1)
        host, port = host_port(server)
        try:
            page = load(host, port, lambda i: "/ui/", args.seconds, 1)
            filtered = load(host, port, lambda i: "/ui/?state=EXECUTOR_ERROR&tag=project:p3", args.seconds, 1)
            api = load(host, port, lambda i: "/ga4gh/wes/v1/runs?page_size=50", args.seconds, 1)
        finally:
            stop_server(server)
    print(f"cores={cores()} runs={args.runs} one connection, {args.seconds:g}s each")
    print(f"/ui/ first page:        {fmt(page)}")
    print(f"/ui/ filtered:          {fmt(filtered)}")
    print(f"API /runs?page_size=50: {fmt(api)}")
    print(f"page p99 {page['p99']:.1f} ms (target <= 200 ms); page/API p50 = {page['p50'] / api['p50']:.2f}")


if __name__ == "__main__":
    main()
