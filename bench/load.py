#!/usr/bin/env python3
"""bench/load: 4 Gunicorn workers, 64 connections, a mix of reads on 100,000 runs for 30 s
(req/s, p99, errors); then POST /runs with a small attachment (runs/s, errors); then the
same read mix against a bare Connexion app serving constants under the same worker class,
and the gateway's ratio to it. Every figure is printed beside the machine's core count."""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import requests
from common import QUIET, ROOT, cores, fmt, host_port, load, start_server, stop_server
from seed import seed_runs

ECHO = (ROOT / "tests" / "data" / "echo.cwl").read_bytes()


def submissions(api: str, seconds: float, threads: int) -> dict[str, float]:
    done, errors = [0], [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        ok = bad = 0
        while time.monotonic() < stop_at:
            response = session.post(
                api + "/runs",
                timeout=60,
                data={
                    "workflow_url": "echo.cwl",
                    "workflow_type": "CWL",
                    "workflow_type_version": "v1.2",
                    "workflow_params": json.dumps({"message": "load"}),
                },
                files=[("workflow_attachment", ("echo.cwl", ECHO))],
            )
            if response.status_code == 200:
                ok += 1
            else:
                bad += 1
        with lock:
            done[0] += ok
            errors[0] += bad

    began = time.monotonic()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"runs_per_s": done[0] / (time.monotonic() - began), "errors": errors[0], "n": done[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--submit-seconds", type=float, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        ids = seed_runs(data, args.runs)
        rng = random.Random(3)
        sample = [rng.choice(ids) for _ in range(10_000)]
        api = "/ga4gh/wes/v1"
        # The mix: mostly polling, as WES clients do.
        mix = (
            [lambda i: f"{api}/runs/{sample[i % len(sample)]}/status"] * 5
            + [lambda i: f"{api}/runs/{sample[i % len(sample)]}"] * 2
            + [lambda i: f"{api}/runs?page_size=50"] * 2
            + [lambda i: f"{api}/service-info"]
        )
        env = {**QUIET, "WES_GATEWAY_MAX_ACTIVE_RUNS_PER_USER": "0"}
        server = start_server(data, env, workers=args.workers)
        host, port = host_port(server)
        try:
            reads = load(host, port, lambda i: mix[i % len(mix)](i), args.seconds, args.connections)
            submitted = submissions(server.api, args.submit_seconds, 8)
        finally:
            stop_server(server)
        bare = start_server(Path(tmp) / "bare", env, workers=args.workers, app="bench.bare_app:app")
        host, port = host_port(bare)
        bare_mix = [lambda i: f"{api}/runs/{sample[i % len(sample)]}/status"] * 7 + [
            lambda i: f"{api}/runs?page_size=50"
        ] * 3
        try:
            baseline = load(host, port, lambda i: bare_mix[i % len(bare_mix)](i), args.seconds, args.connections)
        finally:
            stop_server(bare)
    print(f"cores={cores()} workers={args.workers} connections={args.connections} runs={args.runs}")
    print(f"gateway mixed reads  {fmt(reads)}  (cores={cores()})")
    print(f"bare connexion       {fmt(baseline)}  (cores={cores()})")
    print(
        f"ratio gateway/bare req/s = {reads['rps'] / baseline['rps']:.2f}, p99 = {reads['p99'] / baseline['p99']:.2f}"
        f"  (cores={cores()})"
    )
    print(
        f"submissions: {submitted['runs_per_s']:.1f} runs/s, {int(submitted['n'])} runs, "
        f"errors {int(submitted['errors'])}  (cores={cores()})"
    )


if __name__ == "__main__":
    main()
