#!/usr/bin/env python3
"""bench/api: GET /runs/{id}/status and GET /runs?page_size=50 with 10,000 runs in the store,
for each Gunicorn worker class, beside a bare Connexion app serving constants under the same
worker class in the same run. Prints req/s, p50, p99 and the ratio gateway/bare."""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from common import QUIET, cores, fmt, host_port, load, start_server, stop_server
from seed import seed_runs

WORKER_CLASSES = {
    "uvicorn": ("wes_gateway.web.serving.UvicornWorker", "wes_gateway.web.asgi:app", "bench.bare_app:app"),
    "gunicorn-asgi": ("asgi", "wes_gateway.web.asgi:app", "bench.bare_app:app"),
    "a2wsgi+gthread": ("gthread", "wes_gateway.web.wsgi:application", "bench.bare_app:wsgi_app"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=cores())
    parser.add_argument("--classes", default=",".join(WORKER_CLASSES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        ids = seed_runs(data, args.runs)
        rng = random.Random(1)
        sample = [rng.choice(ids) for _ in range(5000)]
        print(
            f"cores={cores()} workers={args.workers} runs={args.runs} connections={args.connections} "
            f"seconds={args.seconds}"
        )
        for label in args.classes.split(","):
            worker_class, app, bare = WORKER_CLASSES[label]
            env = {**QUIET, "WES_GATEWAY_THREADS": "8"}
            results = {}
            for kind, target in (("gateway", app), ("bare", bare)):
                server = start_server(
                    data if kind == "gateway" else Path(tmp) / f"bare-{label}",
                    env,
                    workers=args.workers,
                    app=target,
                    worker_class=worker_class,
                )
                host, port = host_port(server)
                try:
                    results[kind, "status"] = load(
                        host,
                        port,
                        lambda i: f"/ga4gh/wes/v1/runs/{sample[i % len(sample)]}/status",
                        args.seconds,
                        args.connections,
                    )
                    results[kind, "list"] = load(
                        host, port, lambda i: "/ga4gh/wes/v1/runs?page_size=50", args.seconds, args.connections
                    )
                finally:
                    stop_server(server)
            for op in ("status", "list"):
                g, b = results["gateway", op], results["bare", op]
                print(f"[{label:15s}] {op:6s} gateway {fmt(g)}")
                print(f"[{label:15s}] {op:6s} bare    {fmt(b)}")
                print(
                    f"[{label:15s}] {op:6s} ratio gateway/bare req/s = {g['rps'] / b['rps']:.2f}  "
                    f"p99 = {g['p99'] / b['p99']:.2f}  (cores={cores()})"
                )


if __name__ == "__main__":
    main()
