"""Shared pieces for the benchmarks: gateways on free ports (harness/, as the tests start
them), a keep-alive load generator. Needs the project installed (`make install`), not the
test extra."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, for harness/

from harness.gateway import ROOT, Server, start_server, unmount_runs  # noqa: E402,F401  (re-exported)
from harness.gateway import stop_server as _stop_server  # noqa: E402


def stop_server(server: Server) -> None:
    """Stop a bench's gateway and unmount its runs' filesystems (its data directory goes next)."""
    _stop_server(server)
    unmount_runs(server.data_dir)


def spread(values: list[float]) -> str:
    """Seconds, their least, greatest and each."""
    return f"min {min(values):.2f} max {max(values):.2f} (all: {', '.join(f'{x:.2f}' for x in values)})"


# A server that only answers: no supervisor (seeded runs stay as they are) and no response
# validation, as a production read path runs.
QUIET = {
    "WES_GATEWAY_SUPERVISOR": "off",
    "WES_GATEWAY_RESPONSE_VALIDATION": "false",
    "WES_GATEWAY_ACCESS_LOG": "/dev/null",
}


def submit_cwl(
    server: Server, attachments: dict[str, bytes], params: dict[str, object], tags: dict[str, str] | None = None
) -> str:
    """POST /runs of a CWL workflow whose first attachment is the workflow; its run_id."""
    import requests

    response = requests.post(
        server.api + "/runs",
        timeout=60,
        data={
            "workflow_url": next(iter(attachments)),
            "workflow_type": "CWL",
            "workflow_type_version": "v1.2",
            "workflow_params": json.dumps(params),
            **({"tags": json.dumps(tags)} if tags else {}),
        },
        files=[("workflow_attachment", (name, body)) for name, body in attachments.items()],
    )
    response.raise_for_status()
    return str(response.json()["run_id"])


def host_port(server: Server) -> tuple[str, int]:
    host, port = server.base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def cores() -> int:
    return os.cpu_count() or 1


def load(host: str, port: int, paths: Callable[[int], str], seconds: float, connections: int) -> dict[str, float]:
    """Closed-loop GETs over keep-alive connections; returns rps, p50, p99 (ms) and errors.
    Uses wrk (C, one thread, so the server keeps the CPU) when installed, else Python."""
    if shutil.which("wrk"):
        _wrk(host, port, paths, 2, connections)  # warm-up: lazy imports, connections, caches
        return _wrk(host, port, paths, seconds, connections)
    return _python_load(host, port, paths, seconds, connections)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    return float(match.group(1)) * _UNITS_MS[match.group(2)] if match else float("nan")


def _wrk(host: str, port: int, paths: Callable[[int], str], seconds: float, connections: int) -> dict[str, float]:
    listed = ", ".join(json.dumps(paths(i)) for i in range(2000))
    script = (
        f"local paths = {{{listed}}}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, int(seconds))}s",
                "--latency",
                "--timeout",
                "30s",
                "-s",
                handle.name,
                f"http://{host}:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(handle.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    if sockets:
        errors += sum(int(x) for x in sockets.groups())
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors, "n": total, "median": p50}


def _python_load(
    host: str, port: int, paths: Callable[[int], str], seconds: float, connections: int
) -> dict[str, float]:
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

    return {
        "rps": len(latencies) / elapsed,
        "p50": pct(0.5),
        "p99": pct(0.99),
        "errors": errors[0],
        "n": len(latencies),
        "median": statistics.median(latencies) * 1000 if latencies else float("nan"),
    }


def fmt(result: dict[str, float]) -> str:
    return (
        f"{result['rps']:8.0f} req/s  p50 {result['p50']:6.1f} ms  p99 {result['p99']:6.1f} ms"
        f"  errors {int(result['errors'])}"
    )


def direct_engine(workdir: Path, image_store: Path) -> tuple[dict[str, str], list[str]]:
    """What a direct `toil-cwl-runner` needs to run containers as the gateway's runs do: the
    same Podman configuration and `docker` shim (containers.prepare, outside any sandbox), as
    a PATH entry in an environment, and Toil's container options. The shim asks the pull
    service for every image, so this process serves it, as a gateway's supervisor does (a
    daemon thread, for the process's lifetime; a stored image is served without a pull)."""
    from wes_gateway.config import load_settings
    from wes_gateway.files.paths import RunPaths
    from wes_gateway.host import containers, pulls

    # run_sandbox=none: the direct runner is outside any sandbox, so its Podman reads the store
    # itself, not the run user's idmapped view of it (which only a supervisor mounts).
    settings = load_settings(
        {}, data_dir=workdir, container_engine="podman", image_store=image_store, run_sandbox="none"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    pulls.start(settings)
    paths = RunPaths(root=workdir / "direct-engine")
    containers.prepare(paths, settings, sandboxed=False)
    for private in paths.container_state:
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {"PATH": f"{paths.containers / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}, containers.cwl_args(
        settings
    )
