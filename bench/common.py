"""Shared pieces for the benchmarks: servers on free ports, a keep-alive load generator."""

from __future__ import annotations

import http.client
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import Server, free_port, start_server, stop_server  # noqa: E402,F401


def cores() -> int:
    return os.cpu_count() or 1


def load(host: str, port: int, paths: Callable[[int], str], seconds: float, connections: int) -> dict[str, float]:
    """Closed-loop GETs over keep-alive connections; returns rps, p50, p99 (ms) and errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[float] = []
        bad = 0
        i = index
        while time.monotonic() < stop_at:
            path = paths(i)
            i += connections
            start = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                continue
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    latencies.sort()
    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
    return {"rps": len(latencies) / elapsed, "p50": pct(0.5), "p99": pct(0.99), "errors": errors[0],
            "n": len(latencies), "median": statistics.median(latencies) * 1000 if latencies else float("nan")}


def fmt(result: dict[str, float]) -> str:
    return (f"{result['rps']:8.0f} req/s  p50 {result['p50']:6.1f} ms  p99 {result['p99']:6.1f} ms"
            f"  errors {int(result['errors'])}")
