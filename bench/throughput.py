#!/usr/bin/env python3
"""bench/throughput: 50 trivial CWL runs submitted at once through the gateway, timed until all
50 are COMPLETE (watched through one filtered list request every 0.2 s), against the same 50
run directly as a pool of concurrent `toil-cwl-runner` processes with the same concurrency (by
default the gateway's own default max_concurrent_runs for this host, which both sides then
use). Prints both and the ratio (target <= 0.7). One warm-up run on each side first."""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from common import ROOT, cores, start_server, stop_server, submit_cwl
from e2e import direct as direct_one  # one direct toil-cwl-runner run of the echo tool

TOOL = ROOT / "tests" / "data" / "echo.cwl"
TERMINAL = ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED")


def through_gateway(server, count: int, batch: str) -> float:  # type: ignore[no-untyped-def]
    """Submit ``count`` runs tagged with ``batch`` (8 at a time), then watch them as a portal
    would: one filtered list request every 0.2 s, not one status request per run."""
    began = time.perf_counter()
    tags = {"batch": batch}
    body = TOOL.read_bytes()
    with ThreadPoolExecutor(8) as pool:
        run_ids = set(
            pool.map(lambda i: submit_cwl(server, {"echo.cwl": body}, {"message": f"{i}"}, tags), range(count))
        )
    deadline = time.monotonic() + 1800
    finished: dict[str, str] = {}
    while len(finished) < count and time.monotonic() < deadline:
        page = requests.get(f"{server.api}/runs", params={"tag": f"batch:{batch}", "page_size": count}, timeout=30)
        finished = {run["run_id"]: run["state"] for run in page.json()["runs"] if run["state"] in TERMINAL}
        time.sleep(0.2)
    assert set(finished) == run_ids, f"{count - len(finished)} runs unfinished"
    assert set(finished.values()) == {"COMPLETE"}, finished
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=0, help="0: the gateway's default for this host")
    args = parser.parse_args()
    if not args.concurrency:
        from wes_gateway.config import load_settings

        args.concurrency = load_settings({}).effective_max_concurrent_runs
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        server = start_server(
            tmp / "gw",
            {
                "WES_GATEWAY_ACCESS_LOG": "/dev/null",
                "WES_GATEWAY_MAX_CONCURRENT_RUNS": str(args.concurrency),
            },
        )
        try:
            through_gateway(server, 1, "warm-up")  # the forkserver and the web workers' imports
            gateway = through_gateway(server, args.runs, "measured")
        finally:
            stop_server(server)
        direct_one(tmp, -1)  # warm-up: the page cache holds Toil and cwltool, as for the gateway
        began = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda i: direct_one(tmp, i), range(args.runs)))
        direct = time.perf_counter() - began
    print(f"cores={cores()} runs={args.runs} concurrency={args.concurrency} (one warm-up run each side)")
    print(f"gateway: all {args.runs} COMPLETE in {gateway:.1f}s ({args.runs / gateway * 60:.1f} runs/min)")
    print(f"direct toil-cwl-runner pool: {direct:.1f}s ({args.runs / direct * 60:.1f} runs/min)")
    print(f"ratio gateway/direct = {gateway / direct:.2f}  (target <= 0.7)")


if __name__ == "__main__":
    main()
